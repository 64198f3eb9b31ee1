#!/usr/bin/env python
"""all-MiniLM-L6-v2, batch 1, seq 128, on this CPU: torch fp32, onnxruntime fp32 and int8,
lowbit.compile (TVM) fp32 / W8A8 / W4A16 untuned, and W8A8 tuned with a small budget.

    python benchmarks/tvm_cpu.py [--threads 2] [--iters 50] [--trials 64] [--db DIR]
        [--variants torch,ort_fp32,ort_int8,tvm_fp32,tvm_w8a8,tvm_w4a16,tvm_w8a8_tuned]

Each variant runs in its own process (TVM's and onnxruntime's thread pools spin after a call
and would slow whatever runs next in the same process), warms up, then times ``--iters``
calls; the median (and min) latency is reported with the 1-minute load average seen, because
this machine is shared and a busy neighbour moves every number. The real model comes from
``lowbit.models.load_minilm``; inputs are real SST-2 sentences padded to 128 tokens; static
recipes calibrate on 16 other sentences. Accuracy column: cosine of the last hidden state vs
torch fp32 on the timed input (mean over tokens).

onnxruntime int8 is its own dynamic quantization (``quantize_dynamic``: u8 activations per
tensor at run time, s8 per-channel weights, MatMulInteger) of the fp32 ONNX that
``lowbit.backends.onnxruntime.export_onnx`` writes. Tuned runs reuse ``--db`` (default
``<lowbit cache>/tvm-tuning``, e.g. ~/.cache/lowbit/tvm-tuning): the first run tunes, later
runs tune nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("torch", "ort_fp32", "ort_int8", "tvm_fp32", "tvm_w8a8", "tvm_w4a16",
            "tvm_w8a8_tuned")


def _inputs(tok, n_calib: int = 16):
    from lowbit.data import read_sst2, text_batches

    texts, _ = read_sst2("dev")
    batches = list(text_batches(tok, texts[:1 + n_calib], batch_size=1, seq_len=128))
    return batches[0], batches[1:]


def _time(fn, iters: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3, ts[0] * 1e3


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
    from lowbit.models import load_minilm
    from lowbit.quantize import quantize

    model, tok = load_minilm(quiet=True)
    x, calib = _inputs(tok)
    with torch.no_grad():
        ref = model(**x).last_hidden_state.numpy()
    feed = {k: v.numpy() for k, v in x.items()}
    info: dict = {"variant": variant}
    if variant == "torch":
        with torch.no_grad():
            info["median_ms"], info["min_ms"] = _time(lambda: model(**x), args.iters)
        info["cosine"] = 1.0
        return info
    gm = capture(model, x)
    if variant.startswith("ort"):
        from lowbit.backends.onnxruntime import OrtRunner, export_onnx

        folder = tempfile.mkdtemp()
        path = export_onnx(gm, os.path.join(folder, "minilm.onnx"))
        if variant == "ort_int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = os.path.join(folder, "minilm.int8.onnx")
            quantize_dynamic(str(path), q_path, weight_type=QuantType.QInt8, per_channel=True)
            path = q_path
        run = OrtRunner(path, threads=args.threads, strict=False)
        out = run(**feed)[0]
        info["median_ms"], info["min_ms"] = _time(lambda: run(**feed), args.iters)
        info["cosine"] = _cosine(out, ref)
        return info
    from lowbit.compiler import Tune, compile

    recipe = {"tvm_fp32": None, "tvm_w8a8": recipes.W8A8, "tvm_w4a16": recipes.W4A16_G128,
              "tvm_w8a8_tuned": recipes.W8A8}[variant]
    graph = gm if recipe is None else quantize(gm, recipe, calibration=calib, progress=False)
    tune = Tune(trials=args.trials, db=args.db) if variant.endswith("tuned") else None
    t0 = time.perf_counter()
    mod = compile(graph, target={"kind": "llvm", "mcpu": _host_cpu(), "num-cores": args.threads},
                  tune=tune)
    info["compile_s"] = round(time.perf_counter() - t0, 1)
    out = mod(**feed)
    info["median_ms"], info["min_ms"] = _time(lambda: mod(**feed), args.iters)
    info["cosine"] = _cosine(out[0], ref)
    if recipe is not None:
        with torch.no_grad():
            info["cosine_fx"] = _cosine(graph(**x).last_hidden_state.numpy(), ref)
    return info


def _host_cpu() -> str:
    from tvm.target import codegen

    return codegen.llvm_get_system_cpu()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--trials", type=int, default=64, help="tuning budget (all kernels)")
    p.add_argument("--db", default=None, help="tuning database (default: lowbit cache)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.db is None:
        from lowbit.models.cache import cache_dir

        args.db = str(cache_dir() / "tvm-tuning")
    if args.worker:
        info = worker(args.worker, args)
        info["load1"] = round(os.getloadavg()[0], 2)
        print("RESULT " + json.dumps(info), flush=True)
        return 0
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    rows = []
    for v in args.variants.split(","):
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", v,
               "--threads", str(args.threads), "--iters", str(args.iters),
               "--trials", str(args.trials), "--db", args.db]
        print(f"[bench] {v} ...", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode or line is None:
            print(f"[bench] {v} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[7:]))
        print(f"[bench] {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nall-MiniLM-L6-v2, batch 1, seq 128, {args.threads} threads, {args.iters} timed calls"
          f" ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n")
    print("| variant | median ms | min ms | cosine vs torch fp32 | compile s | load avg |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cos = f"{r['cosine']:.5f}" + (f" (FX {r['cosine_fx']:.5f})" if "cosine_fx" in r else "")
        print(f"| {r['variant']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {cos} | "
              f"{r.get('compile_s', '')} | {r['load1']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
