#!/usr/bin/env python
"""DNAS precision plans of Gemma-3-270M searched on a GPU (issue 17: DNAS vs uniform plans),
read back and evaluated on the CPU by ``benchmarks/gemma_mixed_precision.py --plans-from``.

Here (once): the token ids of wikitext-2 test and the GGUF in chunks small enough to carry::

    python scripts/gpu_gemma_dnas.py prepare --dir .gpu_bundle/dnas [--chunk-mb 50]

On the device (the chunks carried call by call into .gpu_bundle/dnas, then)::

    python3 scripts/gpu_gemma_dnas.py search --dir .gpu_bundle/dnas --out $OUT \\
        --jobs kl:3.25,kl:4.25,kl:5 [--steps 256] [--probes 7] [--lambda-start 10]
        [--batch 8] [--calib-windows 128] [--train-ctx 128] [--neurons 256]

``search`` reassembles the GGUF (sha256 checked), then runs each job ``loss:avg_bits`` in its
own process, all at once on the one GPU: Gemma-3-270M (fp32, ``load_gguf_gemma``) captured on
the GPU at [batch, train_ctx]; calibration = ``--calib-windows`` windows of ``train_ctx`` tokens
([BOS] + chunk) from the end of the text, as ``gemma_mixed_precision.py`` takes them (the
evaluation text, its first tokens, is never seen), ``batch`` windows a step;
``search_precision_dnas`` over the space without the pruned candidate
(``SearchSpace(bits=(2, 3, 4, 8))``), q/k/v per head, up/gate per ``--neurons`` neurons, with
the loss ``kl`` (``distillation="kl"``: KL to the fp32 model's next-token distribution) or
``ce`` (next-token cross-entropy on the calibration text), TF32 matrix products unless
``--no-tf32``. Each job writes
``$OUT/plans/plan_dnas-gpu-<loss>_<bits>.json`` when it ends and appends to ``$OUT/log.txt``;
``$OUT/summary.json`` gets the settings, each job's plan bytes and seconds, and a perplexity
on the GPU (the evaluation windows of ``gemma_mixed_precision.py``, for a first look only: the
numbers to cite come from the CPU evaluation). Probes are checkpointed in ``/tmp/dnas_ckpt``,
so a rerun on the same (warm) machine resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF = "gemma-3-270m-q4_k_m.gguf"
IDS = "wikitext2_ids.pt"


def prepare(args) -> None:
    """Token ids (``gemma_mixed_precision.py``'s tokenization) and the GGUF in chunks."""
    import gguf
    import torch

    from lowbit.data import shared_data_dir
    from lowbit.models.gemma import _tokenizer, gemma_config_from_gguf, gemma_gguf_path

    out = pathlib.Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    path = gemma_gguf_path()
    tok = _tokenizer(path, quiet=False)
    bos = gemma_config_from_gguf(gguf.GGUFReader(str(path))).bos_token_id  # as load_gemma's
    text = (shared_data_dir() / "wikitext2_test_raw.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    torch.save({"ids": ids.to(torch.int32), "bos": int(bos)}, out / IDS)
    data = path.read_bytes()
    size = args.chunk_mb * 1_000_000
    for i in range(0, len(data), size):
        (out / f"{GGUF}.part{i // size}").write_bytes(data[i:i + size])
    print(f"{len(ids)} tokens, {math.ceil(len(data) / size)} chunks in {out}")


def assemble(folder: pathlib.Path) -> pathlib.Path:
    target = pathlib.Path("/tmp") / GGUF
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == GEMMA_SHA256:
        return target
    parts = sorted(folder.glob(f"{GGUF}.part*"), key=lambda p: int(p.suffix[5:]))
    data = b"".join(p.read_bytes() for p in parts)
    got = hashlib.sha256(data).hexdigest()
    if got != GEMMA_SHA256:
        sys.exit(f"GGUF from {len(parts)} chunks: sha256 {got}, want {GEMMA_SHA256}")
    target.write_bytes(data)
    return target


def log(out: pathlib.Path, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(out / "log.txt", "a") as f:
        f.write(line + "\n")


def search(args) -> None:
    out = pathlib.Path(args.out)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    gguf = assemble(pathlib.Path(args.dir))
    jobs = [j for j in args.jobs.split(",") if j]
    log(out, f"GGUF ok ({gguf}); jobs {jobs}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for job in jobs:
        cmd = [sys.executable, __file__, "job", job, *sys.argv[2:]]
        with open(f"/tmp/dnas_{job}.err", "w") as err:
            procs.append((job, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                stderr=err)))
    summary = {"command": " ".join(sys.argv), "settings": vars(args), "jobs": {}}
    for job, p in procs:
        rc = p.wait()
        res = pathlib.Path(f"/tmp/dnas_{job}.json")
        summary["jobs"][job] = (json.loads(res.read_text()) if res.is_file()
                                else {"rc": rc, "stderr_tail": pathlib.Path(
                                    f"/tmp/dnas_{job}.err").read_text()[-3000:]})
        log(out, f"job {job}: rc {rc}")
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def job(args) -> None:
    import torch

    import lowbit
    from lowbit.mixed_precision import lm_loss
    from lowbit.mixed_precision_dnas import search_precision_dnas
    from lowbit.models.gemma import load_gguf_gemma
    from lowbit.search import Budget, PerHead, PerNeurons, SearchSpace

    out = pathlib.Path(args.out)
    loss, bits = args.job.split(":")
    bits, _, lam = bits.partition("@")          # kl:4.25@6.5: this job's lambda_start
    name = f"dnas-gpu-{loss} @ {float(bits):g}"
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32   # the search only; plans are
    torch.backends.cudnn.allow_tf32 = args.tf32         # evaluated in fp32 on the CPU
    lm = load_gguf_gemma(pathlib.Path("/tmp") / GGUF).to(dev)
    if args.layers:                        # a smoke test: the first blocks only
        lm.model.layers = lm.model.layers[:args.layers]
        lm.config.num_hidden_layers = args.layers
        lm.config.layer_types = lm.config.layer_types[:args.layers]
    saved = torch.load(pathlib.Path(args.dir) / IDS)
    ids, bos = saved["ids"].long(), saved["bos"]
    m = args.train_ctx - 1
    start = len(ids) - args.calib_windows * m
    wins = [torch.cat([torch.tensor([bos]), ids[i:i + m]]) for i in range(start, len(ids), m)]
    batches = [torch.stack(wins[i:i + args.batch]) for i in range(0, len(wins), args.batch)
               if len(wins[i:i + args.batch]) == args.batch]
    gm = lowbit.capture(lm, (batches[0].to(dev),))
    where = torch.cuda.get_device_name() if dev.type == "cuda" else str(dev)
    log(out, f"{name}: model and capture on {where}, "
             f"{len(batches)} batches of {args.batch} x {args.train_ctx} from token {start}, "
             f"{time.perf_counter() - t0:.0f} s")

    def next_token_ce(outputs, batch):
        return lm_loss(outputs, {"input_ids": batch})

    bits_space = tuple(int(b) for b in args.bits.split(","))
    kw = {"distillation": "kl"} if loss == "kl" else {"loss_fn": next_token_ce}
    t = time.perf_counter()
    plan = search_precision_dnas(
        gm, Budget(avg_bits=float(bits)), calibration=batches,
        granularity=(PerHead(), PerNeurons(args.neurons)), space=SearchSpace(bits=bits_space),
        steps=args.steps, probes=args.probes, lr=args.lr,
        lambda_start=float(lam) if lam else args.lambda_start, lambda_factor=args.lambda_factor,
        checkpoint=pathlib.Path("/tmp/dnas_ckpt") / args.job.replace(":", "_").replace("@", "_"),
        checkpoint_every=max(1, args.steps // 2), **kw)
    search_s = time.perf_counter() - t
    plan.save(out / "plans" / f"plan_dnas-gpu-{loss}_{float(bits):g}.json")
    res = {"name": name, "bytes": plan.total_bytes, "bits": plan.average_bits,
           "search_s": search_s, "lambda": plan.info["lambda"], "probes": plan.info["probes"],
           "device": where, "torch": torch.__version__}
    log(out, f"{name}: {plan.total_bytes:,} B ({plan.average_bits:.3f} bits), lambda "
             f"{plan.info['lambda']:.3g}, search {search_s:.0f} s; probes {plan.info['probes']}")
    del gm
    try:                                   # a first look; the CPU evaluation is the one cited
        n = 511
        ev = [torch.cat([torch.tensor([bos]), ids[i:i + n]])[None]
              for i in range(0, math.ceil(2048 / n) * n, n)]
        gme = lowbit.capture(lm, (ev[0].to(dev),))
        q = lowbit.apply_precision(gme, plan, progress=False)
        nll = 0.0
        with torch.no_grad():
            for w in ev:
                w = w.to(dev)
                lg = q(w)
                lg = (lg.logits if hasattr(lg, "logits") else lg[0])[0, :-1]
                nll += float(torch.nn.functional.cross_entropy(lg.float(), w[0, 1:],
                                                               reduction="sum"))
        res["gpu_ppl"] = math.exp(nll / (len(ev) * n))
        log(out, f"{name}: perplexity on the GPU {res['gpu_ppl']:.3f}")
    except Exception as e:                 # noqa: BLE001 (the plan is saved either way)
        res["gpu_ppl_error"] = f"{type(e).__name__}: {e}"[:500]
        log(out, f"{name}: no GPU perplexity ({res['gpu_ppl_error']})")
    pathlib.Path(f"/tmp/dnas_{args.job}.json").write_text(json.dumps(res, default=str))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--dir", default=".gpu_bundle/dnas")
    pp.add_argument("--chunk-mb", type=int, default=51)
    for name in ("search", "job"):
        s = sub.add_parser(name)
        if name == "job":
            s.add_argument("job")
        s.add_argument("--dir", default=".gpu_bundle/dnas")
        s.add_argument("--out", default=os.environ.get("OUT", "/tmp/dnas_out"))
        s.add_argument("--jobs", default="kl:3.25,kl:4.25,kl:5")
        s.add_argument("--steps", type=int, default=256)
        s.add_argument("--probes", type=int, default=7)
        s.add_argument("--lambda-start", type=float, default=10.0)
        s.add_argument("--lambda-factor", type=float, default=10.0)
        s.add_argument("--lr", type=float, default=0.1)
        s.add_argument("--batch", type=int, default=8)
        s.add_argument("--calib-windows", type=int, default=128)
        s.add_argument("--train-ctx", type=int, default=128)
        s.add_argument("--neurons", type=int, default=256)
        s.add_argument("--bits", default="2,3,4,8", help="the space's bits (no pruning)")
        s.add_argument("--device", default="cuda")
        s.add_argument("--layers", type=int, default=0, help="keep only the first N blocks "
                                                             "(a smoke test; 0: all)")
        s.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                       help="TF32 matrix products in the search (default on)")
    args = p.parse_args(argv)
    {"prepare": prepare, "search": search, "job": job}[args.cmd](args)


if __name__ == "__main__":
    main()
