"""On the GPU machine, with the TVM runtime only: the tiered LM head of per-word embedding plans
(``lowbit::tiered_linear``: one BCQ GEMV per tier, kernels/cuda.py ``shell_bcq``, then the
gather back into vocabulary order) on Gemma-3-270M's 262,144 x 640 table at M = 1, checked
against float64 and timed against lowbit's W4A16 GEMV and torch fp16 on the same table.

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime bundle>:. python scripts/gpu_check_words.py \\
        [--bundle .gpu_bundle] [--json out.json]

Reads .gpu_bundle/words (``python scripts/gpu_prepare.py --skip kernels,models,bcq``). The
plans come from Zipf counts over every id (the tier sizes only matter here, not which ids).
Times: medians of 200 back-to-back calls between CUDA events; "tiers" launches every tier's
module (each: ``y = bias``, then the GEMV); "gather" is torch ``index_select`` of the
concatenated logits by a random permutation (what the Relax ``take`` does after the tiers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check as gc  # (sets up the runtime-only lowbit package)
import tvm
from gpu_check_bcq import operands, reference


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", default=str(gc.REPO / ".gpu_bundle"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA backend: "
          f"{gc.load_cuda_backend()}", flush=True)
    folder = Path(args.bundle) / "words"
    index = json.loads((folder / "words.json").read_text())
    v, d = index["vocab"], index["dim"]
    g = torch.Generator(device="cuda").manual_seed(0)
    bw = gc.bandwidth()
    rows = []
    x = torch.randn(1, d, device="cuda", generator=g)
    # baselines on the full table
    wh = torch.randn(v, d, device="cuda", generator=g).half()
    xh = x.half()
    ms_fp16 = gc.bench_ms(lambda wh=wh: xh @ wh.t(), iters=200)
    del wh
    xw, w4, s4, b4 = gc.w4_inputs(1, v, d, index["w4a16"]["group"], g)
    f4 = tvm.runtime.load_module(str(folder / index["w4a16"]["file"]))["main"]
    y4 = torch.full((1, v), float("nan"), device="cuda")
    a4 = [gc.t_(a) for a in (xw, w4, s4, b4, y4)]
    f4(*a4)
    tvm.cuda(0).sync()
    err = gc.rel(gc.back(a4[-1]), gc.w4_ref(xw, w4, s4, b4))
    gc.check(err < 1e-5, f"w4a16 1x{v}x{d}: rel err {err:.2e}")
    ms_w4 = gc.bench_ms(lambda: f4(*a4), iters=200)
    w4_mb = (w4.numel() + s4.numel() * 4) / 1e6
    perm = torch.randperm(v, device="cuda", generator=g)
    ycat = torch.randn(1, v, device="cuda", generator=g)
    ms_gather = gc.bench_ms(lambda: ycat.index_select(1, perm), iters=200)
    for name, plan in index["plans"].items():
        calls, mb = [], 0.0
        for t in plan["tiers"]:
            q, n, width = t["q"], t["n"], t["width"]
            xt, bits, alpha, off, bias, kp = operands(1, n, d, q, d, False, width, g)
            xt.copy_(x)
            ref, _ = reference(xt, bits, alpha, off, bias)
            f = tvm.runtime.load_module(str(folder / t["file"]))["main"]
            y = torch.full((1, n), float("nan"), device="cuda")
            targs = [gc.t_(a) for a in (xt, *kp, bias, y)]
            f(*targs)
            tvm.cuda(0).sync()
            got = gc.back(targs[-1])
            err = gc.rel(got, ref)
            gc.check(bool(torch.isfinite(got).all()) and err < 1e-5,
                     f"{name} tier q={q} n={n}: rel err {err:.2e}")
            calls.append((f, targs))
            mb += sum(a.numel() * a.element_size() for a in kp) / 1e6

        def run(calls=calls):
            for f, targs in calls:
                f(*targs)

        ms = gc.bench_ms(run, iters=200)
        rows.append({"plan": name, "average_bits": plan["average_bits"],
                     "tiers": [(t["q"], t["n"]) for t in plan["tiers"]], "MB": mb,
                     "tiers_ms": ms, "gather_ms": ms_gather, "w4a16_ms": ms_w4,
                     "w4a16_MB": w4_mb, "torch_fp16_ms": ms_fp16,
                     "vs_w4a16": ms_w4 / (ms + ms_gather), "GBps": mb / ms,
                     "of_copy": mb / ms / bw})
    print(f"\ncopy {bw:.0f} GB/s; W4A16 (g128) {ms_w4:.4f} ms for {w4_mb:.1f} MB; torch fp16 "
          f"{ms_fp16:.4f} ms; gather {ms_gather:.4f} ms\n")
    print("| plan | avg bits | tiers (q: rows) | MB | tiers ms | + gather ms | W4A16 / tiered |"
          " GB/s (tiers) | of copy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tiers = ", ".join(f"{q}: {n}" for q, n in r["tiers"])
        print(f"| {r['plan']} | {r['average_bits']:.2f} | {tiers} | {r['MB']:.1f} | "
              f"{r['tiers_ms']:.4f} | {r['tiers_ms'] + r['gather_ms']:.4f} | "
              f"{r['vs_w4a16']:.2f} | {r['GBps']:.0f} | {r['of_copy']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_GBps": bw, "rows": rows,
                                               "fails": gc.FAILS}, indent=1))
    print(f"\n{len(gc.FAILS)} check(s) failed" + (": " + "; ".join(gc.FAILS) if gc.FAILS else ""))
    sys.exit(1 if gc.FAILS else 0)


if __name__ == "__main__":
    main()
