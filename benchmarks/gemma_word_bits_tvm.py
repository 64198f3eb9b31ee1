#!/usr/bin/env python
"""Gemma-3-270M with a per-word mixed-precision word table in TVM: compile, run, agree with FX,
time a decode-length call.

    python benchmarks/gemma_word_bits_tvm.py [--bits 2.125] [--method bcq] [--plan PLAN.json]
        [--counts /tmp/lb/word_bits/counts.json] [--ctx 128] [--iters 15] [--runs 20]
        [--threads 2]

1. Plan: ``--plan`` (a ``WordBitsPlan`` JSON, e.g. one benchmarks/gemma_word_bits.py saved) or,
   per target of ``--bits``, ``plan_for_budget(counts, target, (4, 3, .., lo))`` with the
   smallest ``lo`` whose feasible range holds the target, on the token counts that
   benchmarks/gemma_word_bits.py writes to ``--counts`` (SST-2 train, pydoc topics,
   wikitext-2 test after its evaluation windows; run it first).
2. The 262144 x 640 tied table is fitted once per plan (``quantize_embedding``, ``--iters``
   BCQ rounds) and given to ``QuantizeWordBits`` as a fitted ``TieredEmbedding``, so every
   graph below holds the same codes. Only the table is quantized: the lookup becomes the
   per-word gather kernel, the tied LM head one BCQ GEMV/GEMM per tier (lowering/word_bits.py);
   every other linear stays fp32.
3. Agreement on one wikitext-2 window of ``--ctx`` tokens (``[BOS]`` + the first ctx - 1
   tokens: inside gemma_word_bits.py's evaluation windows, so disjoint from the counts): the
   FX graph in eager torch vs the module compiled for this CPU (``target="cpu"``): the
   logits' max relative difference (max |TVM - FX| / max |FX|) and next-token argmax
   agreement.
4. Decode-length call: the model captured on one token (``[BOS]``, no KV cache: a forward of
   M = 1 row), compiled for the CPU with the float table and with the per-word table; the
   median (and minimum) of ``--runs`` calls of each (``lowbit.timing.measure``, 3 warm-up
   calls), and of the same two graphs in eager torch. The untuned default schedules of
   ``lowbit.compile`` on both sides.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import pathlib
import sys
import time

import numpy as np
import torch

import lowbit
from lowbit.backends.tvm.api import lowering_summary
from lowbit.data import shared_data_dir
from lowbit.models import load_gemma
from lowbit.passes.fx.word_bits import QuantizeWordBits
from lowbit.quant import bcq
from lowbit.quant.word_bits import (
    WordBitsPlan,
    feasible_range,
    plan_for_budget,
    quantize_embedding,
)
from lowbit.timing import Latency, load_average, measure

DATA = "wikitext2_test_raw.txt"
FLAGS = ("avx512_vnni", "avx_vnni", "avx512bw", "avx2")


def log(msg: str) -> None:
    print(msg, flush=True)


def _logits(out) -> np.ndarray:
    y = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) \
        else out
    return np.asarray(y.detach() if isinstance(y, torch.Tensor) else y)


def cpu_flags() -> list[str]:
    try:
        have = set(pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return []
    return [f for f in FLAGS if f in have]


def load_counts(path: pathlib.Path, vocab: int) -> torch.Tensor:
    """The token counts benchmarks/gemma_word_bits.py saved (``{"vocab_size", "counts"}``)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no token counts; run benchmarks/gemma_word_bits.py (it "
                         f"writes them), or pass --plan")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("vocab_size") != vocab:
        raise SystemExit(f"{path}: counts for {data.get('vocab_size')} ids, Gemma has {vocab}")
    log(f"counts: {path} ({sum(data['counts'])} tokens)")
    return torch.tensor(data["counts"], dtype=torch.int64)


def plans(args, vocab: int) -> list[tuple[str, WordBitsPlan]]:
    """(name, plan): ``--plan``, or per ``--bits`` target the ladder (4, .., lo) with the
    smallest lo that reaches it (module docstring)."""
    if args.plan is not None:
        return [(args.plan.stem, WordBitsPlan.load(args.plan))]
    counts, out = load_counts(args.counts, vocab), []
    for target in args.bits:
        fits = [b for b in (tuple(range(4, lo - 1, -1)) for lo in range(1, 5))
                if feasible_range(counts, b)[0] - 1e-9 <= target
                <= feasible_range(counts, b)[1] + 1e-9]
        if not fits:
            log(f"word-{args.method} @ {target:g}: no tier ladder (4, .., lo) reaches it")
            continue
        out.append((f"word-{args.method} @ {target:g}",
                    plan_for_budget(counts, target, fits[0], method=args.method)))
    return out


def compiled(gm, what: str):
    t = time.perf_counter()
    mod = lowbit.compile(gm, target="cpu", progress=False)
    log(f"  {what}: compiled in {time.perf_counter() - t:.0f} s")
    return mod


def timed(mod, x: torch.Tensor, runs: int) -> Latency:
    return measure(functools.partial(mod, x), iters=runs, warmup=3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=lambda s: [float(b) for b in s.split(",") if b], default=[2.125],
                   help="target average code bits, comma-separated")
    p.add_argument("--method", choices=("bcq", "uniform"), default="bcq")
    p.add_argument("--plan", type=pathlib.Path, default=None, help="a WordBitsPlan JSON instead")
    p.add_argument("--counts", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/word_bits/counts.json"))
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--iters", type=int, default=bcq.DEFAULT_ITERS)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log(f"cpu flags: {' '.join(cpu_flags())}; {args.threads} thread(s); load average "
        f"{load_average()}")

    lm, tok = load_gemma()
    weight = lm.model.embed_tokens.weight
    vocab = weight.shape[0]
    text = (shared_data_dir() / DATA).read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    bos = lm.config.bos_token_id
    x = torch.cat([torch.tensor([bos]), ids[:args.ctx - 1]])[None]
    x1 = torch.tensor([[bos]])
    variants = plans(args, vocab)

    gm, gm1 = lowbit.capture(lm, (x,)), lowbit.capture(lm, (x1,))
    float_ms = timed(compiled(gm1, "float, M=1"), x1, args.runs)
    with torch.no_grad():
        float_torch = measure(functools.partial(gm1, x1), iters=args.runs, warmup=3)
    log(f"  float, M=1: TVM {float_ms}; eager torch {float_torch}")
    for name, plan in variants:
        log(f"{name}: tiers {plan.bits}, rows {plan.tier_sizes}, average "
            f"{plan.average_bits:.4f} bits")
        t = time.perf_counter()
        table = quantize_embedding(weight.detach(), plan, iters=args.iters, progress=False)
        log(f"  fitted in {time.perf_counter() - t:.0f} s; {table.nbytes()['total'] / 1e6:.1f} "
            f"MB (fp16 table {vocab * weight.shape[1] * 2 / 1e6:.1f} MB)")
        q, q1 = copy.deepcopy(gm), copy.deepcopy(gm1)
        for g in (q, q1):
            QuantizeWordBits(table, progress=False)(g)
        mod = compiled(q, f"ctx {args.ctx}")
        log(f"  {lowering_summary(mod.meta['lowering'], None)}")
        with torch.no_grad():
            fx = _logits(q(x))
        got = _logits(mod(x))
        rel = float(np.abs(got - fx).max() / np.abs(fx).max())
        same = float((got.argmax(-1) == fx.argmax(-1)).mean())
        with torch.no_grad():
            fx_ms = measure(functools.partial(q, x), iters=3, warmup=1)
        tvm_ms = timed(mod, x, 5)
        del mod
        word_ms = timed(compiled(q1, "M=1"), x1, args.runs)
        with torch.no_grad():
            word_torch = measure(functools.partial(q1, x1), iters=args.runs, warmup=3)
        log(f"{name}: TVM vs FX logits max relative {rel:.2e}, next-token argmax equal "
            f"{same:.1%} ({args.ctx} tokens); forward of {args.ctx} tokens: FX "
            f"{fx_ms.median_ms:.0f} ms, TVM {tvm_ms.median_ms:.0f} ms; decode-length call "
            f"(M=1) in TVM: per-word {word_ms}, float {float_ms} "
            f"(x{float_ms.median_ms / word_ms.median_ms:.2f}); in eager torch: per-word "
            f"{word_torch}, float {float_torch}; {args.threads} thread(s), load average "
            f"{load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
