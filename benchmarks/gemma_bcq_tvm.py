#!/usr/bin/env python
"""Gemma-3-270M with BCQ weights, end to end in TVM: compile, run, agree with FX.

    python benchmarks/gemma_bcq_tvm.py [--bits 4,3] [--ctx 128] [--iters 15] [--threads 2]
        [--routes fx,onnx]

Per bit width: ``lowbit.quantize(gm, W<b>_BCQ)`` on the captured model (every decoder linear
becomes ``lowbit::bcq_linear``, group 128; the tied embedding / LM head stays float), then per
route ``lowbit.compile(..., target="cpu")``: ``fx`` from the quantized graph, ``onnx`` from its
``export_onnx`` file (``lowbit.BCQLinear`` nodes), which onnxruntime also runs (the nodes'
decomposition). The script prints the logits' max relative difference to FX on one wikitext-2
window of ``--ctx`` tokens, the next-token argmax agreement, and the median forward time of
each (5 runs, one process).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.config import BCQ, Recipe
from lowbit.data import shared_data_dir
from lowbit.export.onnx import export_onnx
from lowbit.models import load_gemma
from lowbit.timing import measure


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", default="4,3")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--routes", default="fx", help="fx and/or onnx, comma-separated")
    args = p.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    if set(routes) - {"fx", "onnx"}:
        p.error(f"--routes: fx and/or onnx, got {args.routes!r}")
    torch.set_num_threads(args.threads)
    lm, tok = load_gemma()
    text = (shared_data_dir() / "wikitext2_test_raw.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    x = torch.cat([torch.tensor([lm.config.bos_token_id]), ids[:args.ctx - 1]])[None]
    gm = lowbit.capture(lm, (x,))
    for bits in [int(b) for b in args.bits.split(",") if b]:
        recipe = Recipe(f"W{bits}_BCQ", weight=BCQ(bits=bits, group=128, iters=args.iters),
                        activation=None)
        q = lowbit.quantize(gm, recipe)
        with torch.no_grad():
            fx = q(x)
            fx = (fx.logits if hasattr(fx, "logits") else fx[0]).numpy()
            fx_ms = measure(functools.partial(q, x), iters=5, warmup=1).median_ms
        print(f"{recipe.name}: FX forward {fx_ms:.0f} ms ({args.ctx} tokens, {args.threads} "
              f"threads)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for route in routes:
                t = time.perf_counter()
                if route == "fx":
                    mod = lowbit.compile(q, progress=False)
                else:
                    path = export_onnx(q, Path(tmp) / f"gemma_w{bits}.onnx")
                    ort = np.asarray(OrtRunner(path, threads=args.threads)(x.numpy())[0])
                    print(f"{recipe.name} onnx: exported in {time.perf_counter() - t:.0f} s; "
                          f"onnxruntime vs FX logits max relative {_rel(ort, fx):.2e}",
                          flush=True)
                    t = time.perf_counter()
                    mod = lowbit.compile(str(path), example_inputs=(x,), progress=False)
                _report(f"{recipe.name} {route}", mod, x, fx, time.perf_counter() - t, args)
                del mod
    return 0


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _report(name: str, mod, x: torch.Tensor, fx: np.ndarray, t_compile: float, args) -> None:
    got = np.asarray(mod(x)[0])
    same = float((got.argmax(-1) == fx.argmax(-1)).mean())
    bcq_layers = [k for _, k in mod.meta["lowering"]].count("bcq_linear")
    tvm_ms = measure(functools.partial(mod, x), iters=5, warmup=1).median_ms
    print(f"{name}: compiled in {t_compile:.0f} s; TVM vs FX logits max relative "
          f"{_rel(got, fx):.2e}, next-token argmax equal {same:.1%}; TVM forward {tvm_ms:.0f} ms"
          f"; {bcq_layers} BCQ layers", flush=True)


if __name__ == "__main__":
    sys.exit(main())
