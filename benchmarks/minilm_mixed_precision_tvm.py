#!/usr/bin/env python
"""all-MiniLM-L6-v2 under a searched mixed-precision, partly pruned plan as one TVM module:
apply, compile, agree with FX, time against the uniform plan of the same bytes (issue 17:
"compiles it to one TVM module"; the Gemma counterpart is gemma_mixed_precision_tvm.py, whose
apply / compile / check / interleaved-timing code this script shares).

    python benchmarks/minilm_mixed_precision_tvm.py [--plans "ilp @ 3.25,uniform int3 g128"]
        [--work /tmp/lb/minilm_mixed_precision] [--batch 16] [--seq 64] [--sample 128]
        [--n-train 2000] [--runs 20] [--no-fp] [--threads 2]
        [--json benchmarks/results/minilm_mixed_precision_tvm.json] [--out docs/accuracy.md]

1. Plans: the ``PrecisionPlan`` JSON files ``benchmarks/minilm_mixed_precision.py`` saved in
   ``--work`` (``plan_<name>.json``, spaces as ``_``; run it first), by row name.
2. all-MiniLM-L6-v2 (``lowbit.models.load_minilm``, fp32) captured with static shapes twice:
   a batch of ``--batch`` SST-2 dev sentences at ``--seq`` tokens, and one sentence (batch 1).
3. Per plan, on both captures: ``lowbit.apply_precision`` weight-only (as in the accuracy
   table: pruned heads leave the graph, o narrowed; int4 g128 -> the W4A16 kernel, 2/3-bit
   uniform and BCQ -> the BCQ bit-plane kernel, int8 dequantized in the graph -> fp32 GEMM),
   except a plan's int8 inputs (``ilp-fast`` plans: int8 weights per channel + static u8 input
   -> the W8A8 kernel), calibrated on the first 8 probe-training batches (``--batch``
   sentences each; their first sentence for the one-sentence capture);
   then ``lowbit.compile(..., target="cpu")``: one module per capture. Reported: blocks per
   format / kernel, the module's lowering, the pruning; the last hidden state's max relative
   difference TVM vs FX (max |TVM - FX| / max |FX|, both shapes); SST-2 predictions of the
   first ``--sample`` dev sentences (``--batch`` at a time through the module) by the frozen
   probe of ``sst2_probe.py`` (logistic regression on FP32 mean-pooled embeddings of the first
   ``--n-train`` train sentences at ``--seq`` tokens): TVM's equal to FX's of the same plan,
   and their accuracy on the sample.
4. Timing (``gemma_mixed_precision_tvm.interleaved``): every variant's modules built first,
   then ``--runs`` rounds call each module once in turn (batch forward, then the one-sentence
   call), so load from other processes on the shared 2-core host falls on all alike; eager
   FX of the same graph for reference, timed after each build.

``--json`` gets the rows; ``--out`` replaces the ``minilm-mixed-precision-tvm`` block inside
the ``minilm-mixed-precision`` section of docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_mixed_precision import pruning
from gemma_mixed_precision_tvm import _tvm_version, interleaved, run_variant
from gemma_word_bits import cpu_flags, save_json
from sst2_probe import replace_section, start_run

import lowbit
from lowbit.data import read_sst2, text_batches
from lowbit.errors import ConfigError
from lowbit.eval.probe import Probe
from lowbit.eval.sentences import last_hidden
from lowbit.models import load_minilm
from lowbit.models.minilm import mean_pool
from lowbit.search import PrecisionPlan
from lowbit.timing import load_average

MARKER = "minilm-mixed-precision-tvm"


def log(msg: str) -> None:
    print(msg, flush=True)


def by_keyword(fn, batch: dict):
    """How a MiniLM capture and its module take an input: keyword tensors."""
    return fn(**batch)


def hidden(out) -> np.ndarray:
    """The last hidden state (the first output) as an array."""
    out = last_hidden(out)
    if isinstance(out, torch.Tensor):
        return out.detach().numpy()
    return out.numpy() if hasattr(out, "numpy") else np.asarray(out)


def plan_path(work: pathlib.Path, name: str) -> pathlib.Path:
    return work / f"plan_{name.replace(' ', '_')}.json"


def predictions(fn, batches: list[dict], probe: Probe) -> torch.Tensor:
    """Probe predictions of the sentences of ``batches`` through ``fn`` (a graph or module)."""
    embs = []
    with torch.no_grad():
        for b in batches:
            h = torch.as_tensor(hidden(by_keyword(fn, b)))
            embs.append(mean_pool(h, b["attention_mask"]))
    return probe.predict(torch.cat(embs))


def render(rows, args, command, started, wall, machine) -> str:
    b, t = args.batch, args.seq
    lines = [
        "### One TVM module per plan (`benchmarks/minilm_mixed_precision_tvm.py`)",
        "",
        (f"Plans saved by the run above, applied with `lowbit.apply_precision` (weight-only, as "
         f"in the table, but for the int8 inputs an `ilp-fast` plan chose: static u8, "
         f"calibrated on 8 batches of {b} train sentences) to all-MiniLM-L6-v2 captured with static shapes at {b} sentences x "
         f"{t} tokens and at 1 sentence x {t} tokens, then `lowbit.compile(..., "
         f"target=\"cpu\")` (untuned default schedules): one module each, every kernel kind "
         f"of the plan in it, pruned heads removed (smaller q/k/v/o GEMMs, fewer heads). "
         f"Agreement: the last hidden state TVM vs the same FX graph in eager torch (max "
         f"relative difference, first batch and the one-sentence input), and SST-2 "
         f"predictions of the first {args.sample} dev sentences ({b} at a time through the "
         f"module) by the frozen probe (trained on FP32 embeddings of {args.n_train} train "
         f"sentences at {t} tokens). TVM latency: medians of {args.runs} rounds (min in "
         f"brackets), every module built first, then each round calls every module once in "
         f"turn, so load from other processes on the shared host falls on all alike; one "
         f"process, {args.threads} threads; eager torch of the same FX graph for reference."),
        "",
        ("| plan | bytes (bits/weight) | row blocks: format -> kernel | compiled linears | "
         "pruned heads | params | TVM vs FX max rel. diff (batch / 1) | SST-2 predictions TVM = "
         f"FX | sample accuracy TVM | {b}x{t} forward TVM / FX ms | 1x{t} TVM / FX ms |"),
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = f"{r['bytes']:,} ({r['bits']:.3f})" if "bytes" in r else "fp32"
        blocks = ", ".join(f"{f} {c} -> {k}" for f, k, c in r["blocks_by_format"]) or "-"
        low = ", ".join(f"{k} {v}" for k, v in sorted(r["lowering"].items(),
                                                   key=lambda kv: -kv[1]))
        lines.append(
            f"| {r['name']} | {size} | {blocks} | {low} | {r.get('pruned_heads', '-')} "
            f"| {r['params']:,} | {r['rel']:.2e} / {r['rel_m1']:.2e} "
            f"| {r['pred_equal']}/{r['sample']} | {100 * r['acc_tvm']:.2f}% "
            f"| {r['tvm_ms']:.1f} ({r['tvm_min_ms']:.1f}) / {r['fx_ms']:.1f} "
            f"| {r['tvm1_ms']:.2f} ({r['tvm1_min_ms']:.2f}) / {r['fx1_ms']:.2f} |")
    lines.append("")
    for r in rows:
        if "bytes" not in r or r["name"].startswith("uniform"):
            continue
        for u in rows:
            if u["name"].startswith("uniform") and u.get("bytes") == r["bytes"]:
                lines.append(
                    f"- {r['name']} vs {u['name']} (same bytes): {b}x{t} forward "
                    f"{r['tvm_ms']:.1f} / {u['tvm_ms']:.1f} ms (x{r['tvm_ms'] / u['tvm_ms']:.2f}; "
                    f"minima {r['tvm_min_ms']:.1f} / {u['tvm_min_ms']:.1f}), 1x{t} "
                    f"{r['tvm1_ms']:.2f} / {u['tvm1_ms']:.2f} ms "
                    f"(x{r['tvm1_ms'] / u['tvm1_ms']:.2f}; minima {r['tvm1_min_ms']:.2f} / "
                    f"{u['tvm1_min_ms']:.2f})")
    lines += [
        "",
        ("row blocks = the plan's blocks after `SplitRowBlocks`, by format and the kernel "
         "`QuantizeFormats` picked (`linear_w4a16` = int4 group-wise, `bcq_linear` = the "
         "bit-plane kernel for BCQ and 2/3-bit uniform codes, `fp32` = fp32 blocks and int8 "
         "weights dequantized in the graph without calibration); compiled linears = the "
         "module's `meta[\"lowering\"]` kinds; params = parameters left in the graph. Lowering "
         "lines as printed:"),
        "",
        *[f"- {r['name']}: {r['lowering_summary']}" for r in rows],
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s ({wall / 60:.1f} min)",
        (f"- machine: {machine['nproc']} cpu(s), {machine['cpu']}; flags "
         f"`{' '.join(cpu_flags())}`; {args.threads} thread(s); load average at the end "
         f"{rows[-1]['load_average']}"),
        (f"- software: torch {machine['torch']}, transformers {machine['transformers']}, "
         f"Python {machine['python']}, lowbit {machine['lowbit']}, tvm {_tvm_version()}"),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plans", default="ilp @ 3.25,uniform int3 g128")
    p.add_argument("--work", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/minilm_mixed_precision"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--sample", type=int, default=128, help="dev sentences for predictions")
    p.add_argument("--n-train", type=int, default=2000, help="probe training sentences")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--no-fp", action="store_true", help="skip the float reference module")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=pathlib.Path, default=None)
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    command, started, t_start, machine = start_run("minilm_mixed_precision_tvm.py", argv,
                                                   args.threads)
    plans = {}
    for name in [s.strip() for s in args.plans.split(",") if s.strip()]:
        path = plan_path(args.work, name)
        if not path.is_file():
            sys.exit(f"no plan {path}: run benchmarks/minilm_mixed_precision.py first")
        plans[name] = PrecisionPlan.load(path)
    model, tok = load_minilm(quiet=True)
    train_texts, train_labels = read_sst2("train")
    dev_texts, dev_labels = read_sst2("dev")

    def batches(texts: list[str], size: int) -> list[dict]:
        return list(text_batches(tok, texts, batch_size=size, seq_len=args.seq))

    t = time.perf_counter()
    train = batches(train_texts[:args.n_train], args.batch)
    with torch.no_grad():
        emb = torch.cat([mean_pool(model(**b).last_hidden_state, b["attention_mask"])
                         for b in train])
    probe = Probe(emb.shape[1]).fit(emb, torch.tensor(train_labels[:len(emb)]))
    log(f"probe: {len(emb)} train sentences, {time.perf_counter() - t:.0f} s")
    n = args.sample - args.sample % args.batch
    sample = batches(dev_texts[:n], args.batch)
    y = torch.tensor(dev_labels[:n])
    x = sample[0]
    x1 = {k: v[:1] for k, v in x.items()}
    gm, gm1 = lowbit.capture(model, x), lowbit.capture(model, x1)
    calibration = (train[:8], [{k: v[:1] for k, v in b.items()} for b in train[:8]])

    def check(q, mod) -> dict:
        fx_pred = predictions(q, sample, probe)
        tvm_pred = predictions(mod, sample, probe)
        return {"sample": n, "pred_equal": int((fx_pred == tvm_pred).sum()),
                "acc_fx": float((fx_pred == y).float().mean()),
                "acc_tvm": float((tvm_pred == y).float().mean())}

    variants = [(nm, pl) for nm, pl in plans.items()] + ([] if args.no_fp else [("FP32", None)])
    rows, keep = [], []

    def write_json() -> None:
        if args.json is not None:
            save_json(args.json, {"command": command, "date": f"{started:%Y-%m-%d %H:%M} UTC",
                                  "machine": machine, "cpu_flags": cpu_flags(),
                                  "threads": args.threads, "rows": rows})

    for name, plan in variants:
        row = run_variant(name, plan, gm, gm1, x, x1, args.runs, keep, call=by_keyword,
                          outputs=hidden, check=check, calibration=calibration)
        if plan is not None:
            row.update(pruning(plan))
        rows.append(row)
        log(f"{name}: SST-2 predictions TVM = FX {row['pred_equal']}/{n}, accuracy TVM "
            f"{row['acc_tvm']:.4f}, FX {row['acc_fx']:.4f}")
        write_json()
    timed = interleaved(keep, x, x1, args.runs, call=by_keyword)
    load = load_average()
    for row in rows:
        fwd, one = timed[row["name"]]
        row.update(tvm_ms=fwd.median_ms, tvm_min_ms=fwd.min_ms, tvm1_ms=one.median_ms,
                   tvm1_min_ms=one.min_ms, load_average=load, timing="interleaved")
        log(f"{row['name']}: TVM {args.batch}x{args.seq} {fwd}; 1x{args.seq} {one}")
    del keep, timed
    gc.collect()
    write_json()
    wall = time.perf_counter() - t_start
    section = render(rows, args, command, started, wall, machine)
    log("\n" + section)
    if args.out is not None:
        text = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if f"<!-- {MARKER}:begin -->" not in text:
            sys.exit(f"{args.out} has no {MARKER} block: run benchmarks/"
                     f"minilm_mixed_precision.py --out {args.out} first")
        replace_section(args.out, section, MARKER)
        log(f"\nwrote the {MARKER} block of {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"minilm_mixed_precision_tvm: {e}")
