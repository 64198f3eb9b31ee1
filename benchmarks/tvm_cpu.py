#!/usr/bin/env python
"""lowbit.compile (TVM) against torch and onnxruntime on this CPU, same thread count, medians.

    python benchmarks/tvm_cpu.py [--model minilm|bert-base-layer] [--batch 1,8] [--threads 2]
        [--iters 50] [--trials 64] [--db DIR] [--variants ...] [--target cpu|x86-64-v3|...]

``--target`` picks the CPU the TVM variants are compiled for (default ``cpu``: this host, its
own instruction set); an LLVM CPU name compiles for that CPU's kernel family instead (e.g.
``x86-64-v3``: the AVX2 kernels, which run on any AVX2 host), so one machine can time every
family it can execute. torch and onnxruntime always use what they detect on the host.

Models: ``minilm`` is the real all-MiniLM-L6-v2 (``lowbit.models.load_minilm``) on real SST-2
sentences padded to 128 tokens (static recipes calibrate on 16 other sentences);
``bert-base-layer`` is one BERT-base-shaped encoder layer (hidden 768, 12 heads, FFN 3072,
random weights, seeded; a 1000-token vocabulary so the embedding costs nothing) on random
tokens. Sequence 128 for both.

Variants: torch (fp32 eager), torch_int8 (``torch.ao.quantization.quantize_dynamic``: int8
Linear weights, activations quantized per call), ort_fp32 (the fp32 ONNX that
``lowbit.export_onnx`` writes), ort_int8 (onnxruntime's own ``quantize_dynamic`` of that file:
u8 activations per tensor at run time, s8 per-channel weights, MatMulInteger), ort_qdq
(lowbit's static W8A8 QDQ export run by onnxruntime, which fuses it into its int8 kernels),
tvm_fp32, tvm_w8a8, tvm_w8a8_full, tvm_w4a16 (lowbit.compile, default schedules), and
tvm_w8a8_tuned, tvm_w8a8_full_tuned, tvm_w8a8_peg_tuned (with MetaSchedule, ``--trials`` over
the kernels the database ``--db`` has no record of; a second run tunes nothing; PEG is
W8A8_FULL's tensor set with PEG K=6 at the FFN input, FFN output and residual sums), and
tvm_onnx_peg_tuned (the same PEG recipe applied to the fp32 ONNX export by
``lowbit.quantize`` on the ONNX file, permutation folded there, and that QDQ file compiled and tuned).

Each variant runs in its own process (TVM's and onnxruntime's thread pools spin after a call
and would slow whatever runs next in the same process), warms up, then times ``--iters`` calls
(``lowbit.timing.measure``); the 1-minute load average seen is printed with it, because this
machine is shared. The parent prints one table per (model, batch) and the ratios between the
medians of that table. Accuracy column: cosine of the last hidden state vs torch fp32 on the
timed input (mean over tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("torch", "torch_int8", "ort_fp32", "ort_int8", "ort_qdq", "tvm_fp32", "tvm_w8a8",
            "tvm_w8a8_full", "tvm_w4a16", "tvm_w8a8_tuned", "tvm_w8a8_full_tuned",
            "tvm_w8a8_peg_tuned", "tvm_onnx_peg_tuned")
MODELS = ("minilm", "bert-base-layer")
SEQ = 128


def _model_and_inputs(name: str, batch: int, n_calib: int = 16):
    """(model, timed input, calibration batches) for ``name`` at ``batch`` x SEQ."""
    import torch

    if name == "minilm":
        from lowbit.data import read_sst2, text_batches
        from lowbit.models import load_minilm

        model, tok = load_minilm(quiet=True)
        texts, _ = read_sst2("dev")
        x = next(text_batches(tok, texts[:batch], batch_size=batch, seq_len=SEQ))
        # the graph is captured at this batch size (static shapes): calibrate at it too
        calib = list(text_batches(tok, texts[batch:batch + max(n_calib, batch)],
                                  batch_size=batch, seq_len=SEQ))
        return model, x, calib
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                     intermediate_size=3072, vocab_size=1000)
    model = BertModel(cfg, add_pooling_layer=False).eval()

    def rand(b):
        ids = torch.randint(0, 1000, (b, SEQ))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return model, rand(batch), [rand(batch) for _ in range(max(1, n_calib // batch))]


def _time(fn, iters: int) -> tuple[float, float]:
    from lowbit.timing import measure

    lat = measure(fn, iters)
    return lat.median_ms, lat.min_ms


def _cosine(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64).reshape(-1, a.shape[-1]), np.asarray(b, np.float64).reshape(
        -1, b.shape[-1])
    return float(np.mean((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


def worker(variant: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from lowbit import recipes
    from lowbit.capture import capture
    from lowbit.quantize import quantize

    model, x, calib = _model_and_inputs(args.model, args.batch)
    with torch.no_grad():
        ref = model(**x).last_hidden_state.numpy()
    feed = {k: v.numpy() for k, v in x.items()}
    info: dict = {"variant": variant}
    if variant in ("torch", "torch_int8"):
        if variant == "torch_int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                           dtype=torch.qint8)
        with torch.no_grad():
            out = model(**x).last_hidden_state.numpy()
            info["median_ms"], info["min_ms"] = _time(lambda: model(**x), args.iters)
        info["cosine"] = _cosine(out, ref)
        return info
    gm = capture(model, x)
    if variant.startswith("ort"):
        from lowbit.backends.onnxruntime import OrtRunner, export_onnx

        folder = tempfile.mkdtemp()
        graph = (quantize(gm, recipes.W8A8, calibration=calib, progress=False)
                 if variant == "ort_qdq" else gm)
        path = export_onnx(graph, os.path.join(folder, "model.onnx"))
        if variant == "ort_int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = os.path.join(folder, "model.int8.onnx")
            quantize_dynamic(str(path), q_path, weight_type=QuantType.QInt8, per_channel=True)
            path = q_path
        run = OrtRunner(path, threads=args.threads, strict=False)
        out = run(**feed)[0]
        info["median_ms"], info["min_ms"] = _time(lambda: run(**feed), args.iters)
        info["cosine"] = _cosine(out, ref)
        return info
    from lowbit.compiler import Tune, compile

    recipe = {"tvm_fp32": None, "tvm_w8a8": recipes.W8A8, "tvm_w8a8_full": recipes.W8A8_FULL,
              "tvm_w4a16": recipes.W4A16_G128, "tvm_w8a8_tuned": recipes.W8A8,
              "tvm_w8a8_full_tuned": recipes.W8A8_FULL, "tvm_w8a8_peg_tuned": recipes.W8A8_PEG,
              "tvm_onnx_peg_tuned": recipes.W8A8_PEG}[variant]
    if variant.startswith("tvm_onnx"):      # the float export, quantized as ONNX, compiled
        from lowbit import quantize as quantize_any
        from lowbit.backends.onnxruntime import export_onnx

        folder = tempfile.mkdtemp()
        path = export_onnx(gm, os.path.join(folder, "model.onnx"))
        graph = os.path.join(folder, "model.qdq.onnx")
        quantize_any(path, recipe, [{k: v.numpy() for k, v in b.items()} for b in calib],
                     out=graph, progress=False)
        recipe = None                       # no FX graph to compare with
    else:
        graph = gm if recipe is None else quantize(gm, recipe, calibration=calib,
                                                   progress=False)
    tune = Tune(trials=args.trials, db=args.db) if variant.endswith("tuned") else None
    t0 = time.perf_counter()
    mod = compile(graph, target=_target(args), tune=tune, progress=False)
    info["kernel_family"] = mod.meta.get("kernel_family")
    info["compile_s"] = round(time.perf_counter() - t0, 1)
    out = mod(**feed)
    out = out[0] if isinstance(out, (tuple, list)) else out   # a one-output module: the array
    info["median_ms"], info["min_ms"] = _time(lambda: mod(**feed), args.iters)
    info["cosine"] = _cosine(out, ref)
    if recipe is not None:
        with torch.no_grad():
            info["cosine_fx"] = _cosine(graph(**x).last_hidden_state.numpy(), ref)
    return info


def _target(args):
    from lowbit.backends.tvm.target import host_target, resolve_target

    if args.target in ("cpu", "host"):
        return host_target(args.threads)
    t = resolve_target(args.target)
    return resolve_target({**{k: v for k, v in t.export().items() if k in ("kind", "mcpu",
                                                                            "mattr")},
                           "num-cores": args.threads})


RATIOS = [  # (numerator, denominator, what it says)
    ("tvm_w8a8_tuned", "ort_qdq", "lowbit W8A8 tuned / onnxruntime static int8 (target < 1)"),
    ("tvm_w8a8_tuned", "ort_int8", "lowbit W8A8 tuned / onnxruntime dynamic int8 (target < 1)"),
    ("torch", "tvm_w8a8_tuned", "torch fp32 / lowbit W8A8 tuned (target >= 4)"),
    ("torch", "tvm_w8a8", "torch fp32 / lowbit W8A8 untuned"),
    ("torch_int8", "tvm_w8a8_tuned", "torch dynamic int8 / lowbit W8A8 tuned"),
    ("tvm_w8a8_peg_tuned", "tvm_w8a8_full_tuned",
     "lowbit PEG W8A8 (K=6) tuned / W8A8_FULL tuned (target <= 1.3)"),
    ("tvm_w8a8_peg_tuned", "tvm_w8a8_tuned", "lowbit PEG W8A8 (K=6) tuned / W8A8 tuned"),
    ("tvm_onnx_peg_tuned", "tvm_w8a8_full_tuned",
     "lowbit PEG W8A8 (K=6) from ONNX, tuned / W8A8_FULL tuned (FX) (target <= 1.3)"),
]


def _run_worker(args, variant: str, model: str, batch: int) -> dict | None:
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--model", model,
           "--batch", str(batch), "--threads", str(args.threads), "--iters", str(args.iters),
           "--trials", str(args.trials), "--db", args.db, "--target", args.target]
    print(f"[bench] {model} b{batch} {variant} ...", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode or line is None:
        print(f"[bench] {variant} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    row = json.loads(line[7:])
    print(f"[bench] {row}", file=sys.stderr, flush=True)
    return row


def _table(rows: list[dict]) -> None:
    print("| variant | median ms | min ms | cosine vs torch fp32 | compile s | load avg |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cos = f"{r['cosine']:.5f}" + (f" (FX {r['cosine_fx']:.5f})" if "cosine_fx" in r else "")
        print(f"| {r['variant']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {cos} | "
              f"{r.get('compile_s', '')} | {r['load1']} |")
    med = {r["variant"]: r["median_ms"] for r in rows}
    lines = [f"- {what}: **{med[a] / med[b]:.2f}**" for a, b, what in RATIOS
             if a in med and b in med]
    if lines:
        print("\nRatios of medians:\n\n" + "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm", help=f"one or more of {MODELS}, comma-separated")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--trials", type=int, default=64, help="tuning budget (all kernels)")
    p.add_argument("--db", default=None, help="tuning database (default: lowbit cache)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--target", default="cpu", help="TVM target: cpu (this host) or an LLVM CPU "
                   "name such as x86-64-v3 (AVX2 kernels)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.db is None:
        from lowbit.models.cache import cache_dir

        args.db = str(cache_dir() / "tvm-tuning")
    if args.worker:
        args.batch = int(args.batch)
        info = worker(args.worker, args)
        info["load1"] = round(os.getloadavg()[0], 2)
        print("RESULT " + json.dumps(info), flush=True)
        return 0
    models, variants = args.model.split(","), args.variants.split(",")
    for bad, known, what in ((set(models) - set(MODELS), MODELS, "model"),
                             (set(variants) - set(VARIANTS), VARIANTS, "variant")):
        if bad:
            p.error(f"unknown {what} {sorted(bad)}; known: {', '.join(known)}")
    batches = [int(b) for b in args.batch.split(",")]
    results = {(m, b): [r for v in variants if (r := _run_worker(args, v, m, b))]
               for m in models for b in batches}
    from lowbit.hostcpu import host_x86_features

    flags = sorted(host_x86_features() & {"avx2", "avx512f", "avx512bw", "avx512_vnni",
                                          "avx_vnni"})
    family = next((r.get("kernel_family") for rows in results.values() for r in rows
                   if r.get("kernel_family")), None)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"seq {SEQ}, {args.iters} timed calls per variant, tuning budget {args.trials}\n"
          f"host CPU flags: {' '.join(flags)}; TVM target {args.target!r}, int8 kernel family "
          f"{family}")
    for (m, b), rows in results.items():
        print(f"\n### {m}, batch {b}\n")
        _table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
