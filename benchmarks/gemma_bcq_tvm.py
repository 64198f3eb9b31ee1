#!/usr/bin/env python
"""Gemma-3-270M with BCQ weights, end to end in TVM: compile, run, agree with FX.

    python benchmarks/gemma_bcq_tvm.py [--bits 4,3] [--ctx 128] [--iters 15] [--threads 2]

Per bit width: ``lowbit.quantize(gm, W<b>_BCQ)`` on the captured model (every decoder linear
becomes ``lowbit::bcq_linear``, group 128; the tied embedding / LM head stays float), then
``lowbit.compile(..., target="cpu")``. The script prints the logits' max relative difference
TVM vs FX on one wikitext-2 window of ``--ctx`` tokens, both next-token argmax agreement rates,
and the median forward time of each (5 runs, one process).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import numpy as np
import torch

import lowbit
from lowbit.config import BCQ, Recipe
from lowbit.data import shared_data_dir
from lowbit.models import load_gemma
from lowbit.timing import measure


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", default="4,3")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
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
        t = time.perf_counter()
        mod = lowbit.compile(q, progress=False)
        t_compile = time.perf_counter() - t
        with torch.no_grad():
            fx = q(x)
            fx = (fx.logits if hasattr(fx, "logits") else fx[0]).numpy()
        got = np.asarray(mod(x)[0])
        rel = float(np.abs(got - fx).max() / np.abs(fx).max())
        same = float((got.argmax(-1) == fx.argmax(-1)).mean())
        bcq_layers = [k for _, k in mod.meta["lowering"]].count("bcq_linear")
        with torch.no_grad():
            fx_ms = measure(functools.partial(q, x), iters=5, warmup=1).median_ms
        tvm_ms = measure(functools.partial(mod, x), iters=5, warmup=1).median_ms
        print(f"{recipe.name}: compiled in {t_compile:.0f} s; TVM vs FX logits max relative "
              f"{rel:.2e}, next-token argmax equal {same:.1%}; forward FX {fx_ms:.0f} ms, "
              f"TVM {tvm_ms:.0f} ms ({args.ctx} tokens, {args.threads} threads)"
              f"; {bcq_layers} BCQ layers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
