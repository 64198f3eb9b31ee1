"""Build the trained tensor-train MiniLM and the dense W8A8 MiniLM for sm_90 here (no GPU), with
references, for scripts/gpu_check_tt.py on the GPU machine (issue 18: the trained TT model in
TVM on the GPU; its SST-2 dev accuracy there; latency against the dense int8 model).

    python scripts/gpu_prepare_tt.py --student FILE [--out .gpu_bundle/tt]

``--student``: a ``benchmarks/minilm_tt_sst2.py --save`` file (e.g. the r64 int4-core student
trained by scripts/gpu_train_tt.sh). Both models are what TVM runs on the CPU too
(``benchmarks/tt_student.py``): the TT one ``deployable`` (materialized halves, W8A8), the
dense one the pretrained all-MiniLM-L6-v2 with W8A8 (its weights are not the fine-tuned
teacher's: it is the latency baseline only). Calibration: 64 SST-2 training sentences.
The word-embedding table of both is cut to the rows that the dev set and the calibration text
use (ids remapped, the function on them unchanged: checked), so the bundle fits the transfer
limit, as scripts/gpu_prepare.py does.

Writes into ``--out``:
    tt_acc_b8/    the TT module at [8, 64]: the 109 dev batches (acc.npz: ids, masks, labels,
                  rows, the head, the FX accuracy, and batch 0's FX and CPU TVM outputs)
    tt_b1/, tt_b8/, dense_b1/, dense_b8/   at [B, 128] on dev sentences: io.npz (inputs, the
                  FX fake-quant output, the CPU TVM output)
    params_tt.bin, params_dense.bin        shared by the modules of one model
    index.json    the lowering summary and bytes of each module
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "scripts"))

SEQ_ACC, SEQ_LAT, LAT_BATCHES = 64, 128, (1, 8)


def log(msg: str) -> None:
    print(f"[gpu-prepare-tt] {msg}", flush=True)


def _cut(gm, used: torch.Tensor) -> None:
    """Replace ``gm``'s word embedding by its ``used`` rows (in place, on our own copy)."""
    from tt_student import WORD

    mod = gm.get_submodule(WORD.rsplit(".", 1)[0])
    mod.weight = torch.nn.Parameter(mod.weight.detach()[used].clone(), requires_grad=False)


def main() -> None:
    from gpu_prepare_bcq_models import save_sm90
    from tt_student import deployable, deployable_bytes, dev_accuracy, padded_batches, rebuild

    import lowbit
    from lowbit.backends.tvm.api import lowering_summary
    from lowbit.data import read_sst2
    from lowbit.models import load_minilm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / ".gpu_bundle" / "tt")
    args = ap.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    student, head, info, tok = rebuild(args.student)
    dense_model, _ = load_minilm(quiet=True)
    texts, labels = read_sst2("dev")
    acc_batches = padded_batches(tok, texts, labels, 8, SEQ_ACC)
    lat = {b: padded_batches(tok, texts[:b], labels[:b], b, SEQ_LAT)[0] for b in LAT_BATCHES}
    tt_texts, tt_labels = read_sst2("train")
    calib_raw = padded_batches(tok, tt_texts[:64], tt_labels[:64], 8, SEQ_ACC)
    every = [*acc_batches, *lat.values(), *calib_raw]
    used = torch.unique(torch.cat([b[0].flatten() for b in every]))
    remap = torch.full((tok.vocab_size,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    log(f"{info}; word embedding cut to {len(used)} rows")

    def feed(b):
        return {"input_ids": remap[b[0]], "attention_mask": b[1]}

    ref_before = student(input_ids=acc_batches[0][0], attention_mask=acc_batches[0][1])[0]
    _cut(student, used)
    ref_after = student(**feed(acc_batches[0]))[0]
    assert torch.equal(ref_before, ref_after), "cutting the embedding changed the model"
    calib = [feed(b) for b in calib_raw]
    q_tt = deployable(student, calib)
    enc = tok(["a short example", "another one here"], padding=True, return_tensors="pt")
    dense = lowbit.capture(dense_model, {"input_ids": enc["input_ids"],
                                         "attention_mask": enc["attention_mask"]}, dynamic=True)
    _cut(dense, used)
    q_dense = lowbit.quantize(dense, lowbit.recipes.W8A8, calibration=calib, progress=False)
    acc_fx = dev_accuracy(lambda i, m: q_tt(input_ids=remap[i], attention_mask=m)[0], head,
                          acc_batches)
    log(f"FX deployable (cut table) dev accuracy {acc_fx:.2f}%")
    index = {"student": args.student.name, "info": info, "rows": len(used),
             "fx_accuracy": acc_fx, "bytes": {"tt": deployable_bytes(q_tt),
                                             "dense": deployable_bytes(q_dense)}, "modules": {}}
    jobs = [("tt_acc_b8", "tt", q_tt, acc_batches[0])]
    jobs += [(f"{m}_b{b}", m, q, lat[b]) for b in LAT_BATCHES
             for m, q in (("tt", q_tt), ("dense", q_dense))]
    for name, model, q, b in jobs:
        x = feed(b)
        t0 = time.perf_counter()
        mod = lowbit.compile(q, target="cuda", example_inputs=x, progress=False)
        t_cuda = time.perf_counter() - t0
        cpu = lowbit.compile(q, target="cpu", example_inputs=x, progress=False)
        got_cpu = np.asarray(cpu(**{k: v.numpy() for k, v in x.items()})[0])
        with torch.no_grad():
            fx = q(**x)[0].numpy()
        d = save_sm90(mod, out, name, model)
        io = {"input_ids": x["input_ids"].numpy(), "attention_mask": x["attention_mask"].numpy(),
              "fx": fx, "cpu": got_cpu}
        if name == "tt_acc_b8":
            io.update(all_ids=np.stack([feed(a)["input_ids"].numpy() for a in acc_batches]),
                      all_masks=np.stack([a[1].numpy() for a in acc_batches]),
                      labels=np.concatenate([np.pad(a[2].numpy(), (0, 8 - a[3]))
                                             for a in acc_batches]),
                      rows=np.array([a[3] for a in acc_batches]),
                      head_w=head.weight.detach().numpy(), head_b=head.bias.detach().numpy())
        np.savez(d / "io.npz", **io)
        index["modules"][name] = {"lowering": lowering_summary(mod.meta["lowering"], None),
                                  "compile_s": round(t_cuda, 1)}
        log(f"{name}: sm_90 in {t_cuda:.1f} s; CPU TVM vs FX max diff "
            f"{float(np.abs(got_cpu - fx).max()):.2e}")
    (out / "index.json").write_text(json.dumps(index, indent=1))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"wrote {out} ({total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
