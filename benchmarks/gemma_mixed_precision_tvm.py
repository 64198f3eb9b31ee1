#!/usr/bin/env python
"""Gemma-3-270M under a searched mixed-precision plan as one TVM module: apply, compile, agree
with FX, time (issue 17: "compiles it to one TVM module").

    python benchmarks/gemma_mixed_precision_tvm.py [--plans "ilp @ 4.25,uniform int4 g128"]
        [--work /tmp/lb/gemma_mixed_precision] [--ctx 128] [--runs 10] [--no-fp]
        [--sequential] [--threads 2] [--json benchmarks/results/gemma_mixed_precision_tvm.json]
        [--out docs/accuracy.md]

1. Plans: the ``PrecisionPlan`` JSON files ``benchmarks/gemma_mixed_precision.py`` saved in
   ``--work`` (``plan_<name>.json``; run it first), by row name.
2. Gemma-3-270M (``lowbit.models.load_gemma``, fp32) captured twice: on one wikitext-2 window
   of ``--ctx`` tokens (``[BOS]`` + the first ctx - 1 tokens of ``wikitext2_test_raw.txt``:
   inside the evaluation windows of gemma_mixed_precision.py, disjoint from its search
   calibration) and on one token (``[BOS]``, no KV cache: a forward of M = 1 row, the shape of
   a decode step).
3. Per plan, on both captures: ``lowbit.apply_precision`` weight-only (as in the perplexity
   table: pruned attentions / neuron blocks leave the graph; int4 g128 -> the W4A16 kernel,
   2/3-bit uniform and BCQ -> the BCQ bit-plane kernel, int8 g128 dequantized in the graph ->
   fp32 GEMM, fp32 stays), then ``lowbit.compile(..., target="cpu")``: one module per capture.
   Reported: the blocks per storage / kernel (``meta["lowbit_precision"]``), the compiled
   module's lowering summary, the pruning; the logits' max relative difference TVM vs FX
   (max |TVM - FX| / max |FX|) and next-token argmax agreement on the ``--ctx`` window; the
   median (and minimum) of ``--runs`` calls of the ctx-token forward and of the M = 1 call,
   TVM and the FX graph in eager torch, all in this one process. Unless ``--no-fp``, the float
   model is compiled and timed the same way.
4. TVM timing, interleaved (unless ``--sequential``): every variant's two modules are kept
   until all are built, then ``--runs`` rounds call each module once in turn (after warm-up),
   so a change in the host's load (other processes on a shared 2-core host) falls on every
   variant alike; with ``--sequential`` each variant is timed alone right after its build
   (``lowbit.timing.measure``). Eager FX timings are sequential either way (a reference).

``--json`` gets the rows; ``--out`` replaces the ``gemma-mixed-precision-tvm`` block inside
the ``gemma-mixed-precision`` section of docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_mixed_precision import TVM_MARKER, plan_file, pruning
from gemma_ppl import DATA
from gemma_word_bits import cpu_flags, save_json
from minilm_mixed_precision import formats
from sst2_probe import replace_section, start_run

import lowbit
from lowbit.backends.tvm.api import lowering_summary
from lowbit.data import shared_data_dir
from lowbit.errors import ConfigError
from lowbit.models import load_gemma
from lowbit.search import PrecisionPlan
from lowbit.search.space import Candidate
from lowbit.timing import Latency, load_average, measure


def log(msg: str) -> None:
    print(msg, flush=True)


def logits_of(out) -> np.ndarray:
    out = out.logits if hasattr(out, "logits") else out[0]
    return np.asarray(out.detach().numpy() if isinstance(out, torch.Tensor) else out)


def positional(fn, x):
    """How a Gemma capture and its module take an input: one positional tensor."""
    return fn(x)


def run_variant(name: str, plan: PrecisionPlan | None, gm, gm1, x, x1, runs: int,
                keep: list | None = None, *, call=positional, outputs=logits_of,
                check=None, calibration=(None, None)) -> dict:
    """Apply, compile, check and time one variant; with ``keep`` (a list) its two TVM modules
    are appended there for ``interleaved`` timing instead of being timed here. ``call(fn,
    inputs)`` feeds a graph or module (``positional``; MiniLM: by keyword), ``outputs`` gives
    the array compared, ``check(q, mod)`` (optional) more entries of the row (FX graph and
    module of the ``x`` capture); ``calibration``: batches for ``gm`` and ``gm1``, used for
    plans with int8 inputs (``plan.activations``)."""
    t = time.perf_counter()
    acts = plan is not None and bool(plan.activations)
    q = gm if plan is None else lowbit.apply_precision(
        gm, plan, progress=False, calibration=calibration[0] if acts else None)
    q1 = gm1 if plan is None else lowbit.apply_precision(
        gm1, plan, progress=False, calibration=calibration[1] if acts else None)
    t_apply = time.perf_counter() - t
    blocks = q.meta.get("lowbit_precision", [])
    kernels = collections.Counter(b["kernel"] for b in blocks)
    storage = collections.Counter(b["storage"] for b in blocks)
    by_format = collections.Counter(
        (Candidate(b["code"], b["bits"], b.get("act", "fp")).label(), b["kernel"])
        for b in blocks)
    t = time.perf_counter()
    mod = lowbit.compile(q, target="cpu", progress=False)
    t_compile = time.perf_counter() - t
    mod1 = lowbit.compile(q1, target="cpu", progress=False)
    t_compile1 = time.perf_counter() - t - t_compile
    with torch.no_grad():
        fx = outputs(call(q, x))
    got = outputs(call(mod, x))
    rel = float(np.abs(got - fx).max() / np.abs(fx).max())
    agree = float((got.argmax(-1) == fx.argmax(-1)).mean())
    with torch.no_grad():
        fx1 = outputs(call(q1, x1))
    got1 = outputs(call(mod1, x1))
    rel1 = float(np.abs(got1 - fx1).max() / np.abs(fx1).max())
    lowering = collections.Counter(k for _, k in mod.meta["lowering"])
    summary = lowering_summary(mod.meta["lowering"], None)
    extra = {} if check is None else check(q, mod)
    with torch.no_grad():
        fx_ms = measure(functools.partial(call, q, x), iters=max(3, runs // 2), warmup=1)
        fx1_ms = measure(functools.partial(call, q1, x1), iters=runs, warmup=3)
    if keep is None:
        tvm_ms = measure(functools.partial(call, mod, x), iters=runs, warmup=2)
        tvm1_ms = measure(functools.partial(call, mod1, x1), iters=runs, warmup=3)
    else:
        keep.append((name, mod, mod1))
        tvm_ms = tvm1_ms = Latency(float("nan"), float("nan"), 0)     # filled in later
    shape = next(iter(x.values())).shape if isinstance(x, dict) else x.shape
    row = {"name": name, "apply_s": t_apply, "compile_s": t_compile, "compile1_s": t_compile1,
           "rel": rel, "argmax": agree, "rel_m1": rel1, "tokens": int(shape[1]), **extra,
           "lowering": dict(lowering), "lowering_summary": summary,
           "blocks_by_kernel": dict(kernels), "blocks_by_storage": dict(storage),
           "blocks_by_format": [[f, k, c] for (f, k), c in by_format.most_common()],
           "pruning": {k: v for k, v in q.meta.get("lowbit_pruning", {}).items()
                       if k in ("heads", "neurons", "removed", "params_before", "params_after")},
           "params": sum(p.numel() for p in q.parameters()),
           "fx_ms": fx_ms.median_ms, "fx_min_ms": fx_ms.min_ms,
           "fx1_ms": fx1_ms.median_ms, "fx1_min_ms": fx1_ms.min_ms,
           "tvm_ms": tvm_ms.median_ms, "tvm_min_ms": tvm_ms.min_ms,
           "tvm1_ms": tvm1_ms.median_ms, "tvm1_min_ms": tvm1_ms.min_ms, "runs": runs,
           "load_average": load_average()}
    if plan is not None:
        row.update({"bytes": plan.total_bytes, "bits": plan.average_bits,
                    "formats": formats(plan), **pruning(plan)})
    log(f"{name}: apply {t_apply:.0f} s, compile {t_compile:.0f} + {t_compile1:.0f} s; TVM vs FX "
        f"logits max relative {rel:.2e} (M=1: {rel1:.2e}), argmax equal {agree:.1%}; "
        f"{shape[1]} tokens: TVM {tvm_ms}, FX {fx_ms}; M=1: TVM {tvm1_ms}, FX {fx1_ms}; "
        f"{summary}; blocks {dict(kernels)}")
    del mod, mod1, q, q1
    gc.collect()
    return row


def interleaved(mods: list, x, x1, runs: int, call=positional
                ) -> dict[str, tuple[Latency, Latency]]:
    """Median and minimum per module over ``runs`` rounds, each calling every module once
    (the ctx-token forward, then the M = 1 call), after 2 / 3 warm-up calls each."""
    for _, mod, mod1 in mods:
        for _ in range(2):
            call(mod, x)
        for _ in range(3):
            call(mod1, x1)
    times = {name: ([], []) for name, _, _ in mods}
    for _ in range(runs):
        for name, mod, mod1 in mods:
            for arg, m, out in ((x, mod, times[name][0]), (x1, mod1, times[name][1])):
                t0 = time.perf_counter()
                call(m, arg)
                out.append(time.perf_counter() - t0)

    def lat(ts: list[float]) -> Latency:
        ts = sorted(ts)
        return Latency(ts[len(ts) // 2] * 1e3, ts[0] * 1e3, len(ts))

    return {name: (lat(a), lat(b)) for name, (a, b) in times.items()}


def latency_reading(rows: list[dict]) -> list[str]:
    """Each searched plan against the uniform plan of the same bytes: median TVM latencies."""
    out = []
    for r in rows:
        if "bytes" not in r or r["name"].startswith("uniform"):
            continue
        for u in rows:
            if u["name"].startswith("uniform") and u.get("bytes") == r["bytes"]:
                out.append(
                    f"- {r['name']} vs {u['name']} (same bytes): {r['tokens']}-token forward "
                    f"{r['tvm_ms']:.0f} / {u['tvm_ms']:.0f} ms (x{r['tvm_ms'] / u['tvm_ms']:.2f}"
                    f"; minima {r['tvm_min_ms']:.0f} / {u['tvm_min_ms']:.0f}), M=1 call "
                    f"{r['tvm1_ms']:.1f} / {u['tvm1_ms']:.1f} ms "
                    f"(x{r['tvm1_ms'] / u['tvm1_ms']:.2f}; minima {r['tvm1_min_ms']:.1f} / "
                    f"{u['tvm1_min_ms']:.1f})")
    return out


def render(rows, args, command, started, wall, machine) -> str:
    lines = [
        "### One TVM module per plan (`benchmarks/gemma_mixed_precision_tvm.py`)",
        "",
        (f"Each plan saved by the run above, applied with `lowbit.apply_precision` (weight-only, "
         f"as in the table) to Gemma-3-270M captured at {rows[0]['tokens']} tokens and at 1 "
         f"token, then `lowbit.compile(..., target=\"cpu\")` (the untuned default schedules): "
         f"one module each, every kernel kind of the plan in it. Agreement: the module's "
         f"logits vs the same FX graph in eager torch on `[BOS]` + the first "
         f"{rows[0]['tokens'] - 1} tokens of `{DATA}` (inside the evaluation windows); "
         + (f"latency: medians of {args.runs} calls (min in brackets), each variant timed "
            f"right after its build" if args.sequential else
            f"TVM latency: medians of {args.runs} rounds (min in brackets), every variant's "
            f"modules built first, then each round calls every module once in turn, so load "
            f"from other processes on the shared host falls on all alike")
         + f", one process, {args.threads} threads; eager torch of the same FX graph (timed "
           f"after each build) for reference."),
        "",
        ("| plan | bytes (bits/weight) | row blocks: format -> kernel | compiled linears | pruned "
         f"| TVM vs FX max rel. diff | next-token argmax equal | {rows[0]['tokens']}-token "
         "forward TVM / FX ms | M=1 call TVM / FX ms |"),
        "|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = f"{r['bytes']:,} ({r['bits']:.3f})" if "bytes" in r else "fp32"
        blocks = ", ".join(f"{f} {c} -> {k}" for f, k, c in r["blocks_by_format"]) or "-"
        low = ", ".join(f"{k} {v}" for k, v in sorted(r["lowering"].items(),
                                                   key=lambda kv: -kv[1]))
        pr = (f"{r['pruned_heads']} q heads ({r['pruned_attentions']} attn), "
              f"{r['pruned_neuron_blocks']} neuron blocks" if "bytes" in r else "-")
        lines.append(
            f"| {r['name']} | {size} | {blocks} | {low} | {pr} | {r['rel']:.2e} "
            f"| {100 * r['argmax']:.1f}% | {r['tvm_ms']:.0f} ({r['tvm_min_ms']:.0f}) / "
            f"{r['fx_ms']:.0f} | {r['tvm1_ms']:.1f} ({r['tvm1_min_ms']:.1f}) / "
            f"{r['fx1_ms']:.1f} |")
    lines += ["", *latency_reading(rows)]
    lines += [
        "",
        ("row blocks = the plan's blocks after `SplitRowBlocks` (consecutive rows of one "
         "format in one linear), by format and the kernel `QuantizeFormats` picked "
         "(`meta[\"lowbit_precision\"]`: `linear_w4a16` = int4 g128, `bcq_linear` = the "
         "bit-plane kernel for BCQ and for 2/3-bit uniform codes, `fp32` = fp32 blocks and "
         "int8 g128 weights, which are dequantized in the graph when no calibration is given); "
         "compiled linears = the module's `meta[\"lowering\"]` kinds with the backend's reason "
         "for fp32 ones (\"group-128 weight of 8 bits\", before 2026-12-03 \"group weight not "
         "symmetric 4-bit\" = the int8 g128 blocks; \"weight not quantized\" = the fp32 LM head and fp32 blocks). Lowering lines "
         "as printed:"),
        "",
        *[f"- {r['name']}: {r['lowering_summary']}" for r in rows],
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s ({wall / 60:.1f} min)",
        (f"- machine: {machine['nproc']} cpu(s), {machine['cpu']}; flags "
         f"`{' '.join(cpu_flags())}`; {args.threads} thread(s); load average at the end "
         f"{rows[-1]['load_average']}"),
        (f"- software: torch {machine['torch']}, transformers {machine['transformers']}, "
         f"Python {machine['python']}, lowbit {machine['lowbit']}, tvm "
         f"{_tvm_version()}"),
    ]
    return "\n".join(lines)


def _tvm_version() -> str:
    try:
        import tvm
        return tvm.__version__
    except Exception:  # noqa: BLE001 (only a label)
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plans", default="ilp @ 4.25,uniform int4 g128")
    p.add_argument("--work", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/gemma_mixed_precision"))
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--no-fp", action="store_true", help="skip the float reference module")
    p.add_argument("--sequential", action="store_true",
                   help="time each variant's TVM modules right after its build")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=pathlib.Path, default=None)
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    command, started, t_start, machine = start_run("gemma_mixed_precision_tvm.py", argv,
                                                   args.threads)
    plans = {}
    for name in [s.strip() for s in args.plans.split(",") if s.strip()]:
        path = plan_file(args.work, name)
        if not path.is_file():
            sys.exit(f"no plan {path}: run benchmarks/gemma_mixed_precision.py first")
        plans[name] = PrecisionPlan.load(path)
    lm, tok = load_gemma()
    ids = tok((shared_data_dir() / DATA).read_text(encoding="utf-8"), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    bos = torch.tensor([lm.config.bos_token_id])
    x = torch.cat([bos, ids[:args.ctx - 1]])[None]
    x1 = bos[None]
    gm, gm1 = lowbit.capture(lm, (x,)), lowbit.capture(lm, (x1,))
    variants = [(n, pl) for n, pl in plans.items()] + ([] if args.no_fp else [("FP32", None)])
    rows, keep = [], None if args.sequential else []

    def write_json() -> None:
        if args.json is not None:
            save_json(args.json, {"command": command, "date": f"{started:%Y-%m-%d %H:%M} UTC",
                                  "machine": machine, "cpu_flags": cpu_flags(),
                                  "threads": args.threads, "rows": rows})

    for name, plan in variants:
        rows.append(run_variant(name, plan, gm, gm1, x, x1, args.runs, keep))
        if keep is None:
            write_json()
    if keep is not None:
        timed = interleaved(keep, x, x1, args.runs)
        load = load_average()
        for row in rows:
            fwd, one = timed[row["name"]]
            row.update(tvm_ms=fwd.median_ms, tvm_min_ms=fwd.min_ms, tvm1_ms=one.median_ms,
                       tvm1_min_ms=one.min_ms, load_average=load, timing="interleaved")
            log(f"{row['name']}: TVM {args.ctx} tokens {fwd}; M=1 {one} (interleaved rounds)")
        del keep, timed
        gc.collect()
        write_json()
    wall = time.perf_counter() - t_start
    section = render(rows, args, command, started, wall, machine)
    log("\n" + section)
    if args.out is not None:
        text = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if f"<!-- {TVM_MARKER}:begin -->" not in text:
            sys.exit(f"{args.out} has no {TVM_MARKER} block: run benchmarks/"
                     f"gemma_mixed_precision.py --out {args.out} first")
        replace_section(args.out, section, TVM_MARKER)
        log(f"\nwrote the {TVM_MARKER} block of {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"gemma_mixed_precision_tvm: {e}")
