#!/usr/bin/env python
"""DNAS vs the integer program (and uniform int4 g128) on all-MiniLM-L6-v2 at one budget, by
the output-distillation error of the resulting weight-fake-quant model on held-out SST-2.

    python benchmarks/minilm_dnas.py [--avg-bits 4.25] [--steps 100] [--probes 6]
        [--lr 0.1] [--temperature 1.0,0.1] [--lambda-start 1.0] [--methods ilp,int4,dnas]
        [--calib 128] [--eval 256] [--seq 64] [--threads 1] [--out /tmp/lb/minilm_dnas.json]

1. The real MiniLM (``lowbit.models.load_minilm``), captured with dynamic batch and length.
2. Calibration: the first ``--calib`` SST-2 train sentences, batches of 8, ``--seq`` tokens.
   Held out: the first ``--eval`` SST-2 dev sentences.
3. Plans per head (``PerHead()``, the default ``SearchSpace``: {pruned, 2, 3, 4, 8} x
   {uniform, BCQ} + fp32, group 128) under ``Budget(avg_bits)``: ``search_precision`` (Fisher +
   HiGHS), ``search_precision_dnas``, and every subgroup uniform int4 (4.25 bits at g128).
4. A plan is applied as weights: each subgroup's rows become ``space.dequantized`` of its
   candidate (pruned: zeros), through ``torch.func.functional_call`` (the graph is untouched).
   Reported per plan: bytes, bits/weight, pruned subgroups, search seconds, and on the held-out
   batches the relative output error ``sum_o mean((o - o_fp)^2) / mean(o_fp^2)``
   (``output_distillation``: last hidden state and pooler) and the mean cosine of the
   mean-pooled sentence embedding vs FP32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import lowbit
from lowbit.data import read_sst2, text_batches
from lowbit.mixed_precision import search_precision
from lowbit.mixed_precision_dnas import output_distillation, search_precision_dnas
from lowbit.models import load_minilm
from lowbit.models.minilm import mean_pool
from lowbit.search import Budget, PerHead, PrecisionPlan, dequantized


def plan_weights(gm, plan: PrecisionPlan) -> dict:
    """The graph's parameters with every planned linear's rows dequantized as planned."""
    params = {n: p.detach() for n, p in gm.named_parameters()}
    by_linear: dict[str, list] = {}
    for e in plan.entries:
        by_linear.setdefault(e.linear, []).append(e)
    for linear, entries in by_linear.items():
        name = f"{linear}.weight"
        w = params[name].float()
        out = torch.empty_like(w)
        cache = {}
        for e in entries:
            if e.candidate not in cache:
                cache[e.candidate] = dequantized(w, e.candidate, plan.space, linear)
            a, b = e.rows
            out[a:b] = cache[e.candidate][a:b]
        params[name] = out
    return params


def evaluate(gm, params, batches, refs) -> tuple[float, float]:
    err, cos = [], []
    with torch.no_grad():
        for b, r in zip(batches, refs):
            o = torch.func.functional_call(gm, params, (), b)
            err.append(float(output_distillation(o, r)))
            e, er = (mean_pool(x[0], b["attention_mask"]) for x in (o, r))
            cos.append(float((e * er).sum(-1).mean()))
    return sum(err) / len(err), sum(cos) / len(cos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--avg-bits", type=float, default=4.25)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--probes", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--temperature", default="1.0,0.1", help="start,end")
    ap.add_argument("--lambda-start", type=float, default=1.0)
    ap.add_argument("--methods", default="ilp,int4,dnas")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/lb/minilm_dnas.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_minilm(quiet=True)
    train, dev = read_sst2("train")[0], read_sst2("dev")[0]
    calib = list(text_batches(tok, train[:a.calib], batch_size=8, seq_len=a.seq))
    held = list(text_batches(tok, dev[:a.eval], batch_size=8, seq_len=a.seq))
    gm = lowbit.capture(model, calib[0], dynamic=True)
    with torch.no_grad():
        refs = [gm(**b) for b in held]
    budget, gran = Budget(avg_bits=a.avg_bits), PerHead()
    rows = []

    def report(name: str, plan: PrecisionPlan, seconds: float) -> None:
        err, cos = evaluate(gm, plan_weights(gm, plan), held, refs)
        rows.append({"plan": name, "bytes": plan.total_bytes, "bits": plan.average_bits,
                     "pruned": sum(e.pruned for e in plan.entries), "seconds": seconds,
                     "rel_err": err, "cosine": cos, "info": plan.info})
        print(f"{name:<10} {plan.total_bytes:>10,} B {plan.average_bits:6.3f} bits "
              f"{rows[-1]['pruned']:>4} pruned {seconds:7.1f} s  rel.err {err:.4e}  "
              f"cos {cos:.5f}", flush=True)

    methods = a.methods.split(",")
    if "ilp" in methods or "int4" in methods:
        t = time.perf_counter()
        ilp = search_precision(gm, budget, calibration=calib, granularity=gran)
        if "ilp" in methods:
            report("ilp", ilp, time.perf_counter() - t)
            print(ilp.summary().splitlines()[-1], flush=True)
        int4 = dataclasses.replace(ilp, entries=tuple(
            dataclasses.replace(e, code="uniform", bits=4, pruned=False, sensitivity=None)
            for e in ilp.entries), info={"method": "uniform int4"})
        if "int4" in methods:
            report("int4", int4, 0.0)
    if "dnas" in methods:
        t = time.perf_counter()
        dnas = search_precision_dnas(
            gm, budget, calibration=calib, granularity=gran, steps=a.steps, probes=a.probes,
            lr=a.lr, temperature=tuple(float(x) for x in a.temperature.split(",")),
            lambda_start=a.lambda_start)
        report("dnas", dnas, time.perf_counter() - t)
        print(dnas.summary().splitlines()[-1], flush=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
