#!/usr/bin/env python
"""SST-2 accuracy vs bytes of all-MiniLM-L6-v2 under mixed-precision plans (integer program,
DNAS) against uniform plans of similar size (issue 17 item 5, first table).

    python benchmarks/minilm_mixed_precision.py [--budgets 3.25,4.25] [--steps 100]
        [--probes 6] [--calib 128] [--seq 64] [--n-train 8000] [--threads 1]
        [--methods ilp,ilp-taylor,dnas] [--uniform uniform:4,bcq:3]
        [--keep-rows benchmarks/results/minilm_mixed_precision.json]
        [--json benchmarks/results/minilm_mixed_precision.json] [--out docs/accuracy.md]

1. The real all-MiniLM-L6-v2 (``lowbit.models.load_minilm``), captured with dynamic batch and
   length (``lowbit.capture``), fp32.
2. Search calibration as ``benchmarks/minilm_dnas.py``: the first ``--calib`` SST-2 train
   sentences, batches of 8, ``--seq`` tokens; subgroups per attention head (``PerHead()``; FFN
   linears whole), the default ``SearchSpace`` ({pruned, 2, 3, 4, 8} x {uniform, BCQ} + fp32,
   group 128, fp32 scales).
3. Plans per ``Budget(avg_bits)``: ``ilp`` = ``plan_for_budget`` on one ``sensitivity_table``
   shared by all budgets (Fisher of the output-distillation surrogate, pruning priced by its
   measured loss increase, ``prune_cost="measured"``, + HiGHS); ``ilp-taylor`` = the same
   table with pruning priced by the Taylor estimate (``table.priced("taylor")``); both offer
   the pruned candidate to heads only (``heads_only``: a linear pruned whole becomes its bias,
   which ``apply_precision`` needs a static shape for, and this graph is dynamic); ``dnas`` =
   ``search_precision_dnas`` (``--steps`` per probe, ``--probes`` lambda probes);
   ``ilp-fast`` = the integer program on a table whose space also offers int8 inputs
   (``SearchSpace(activations=("fp", "int8"))``: int8 weights per channel + static u8 input,
   the W8A8 kernel) with each candidate's kernel time measured in TVM on this CPU at
   ``--latency-m`` tokens per call (``mixed_precision_latency.measure_latency``, records in
   ``--latency-db``; the whole linears and one head's rows: ``latency_model`` fits a fixed
   cost per kernel call, paid once per block of consecutive heads of one format), under ``Budget(avg_bits=b, seconds=T)``, T = the summed kernel time of
   the largest uniform plan within the bytes (the latency goal: no slower than uniform at the
   same bytes). Uniform
   baselines are PrecisionPlans over the same subgroups with one candidate everywhere
   (``--uniform code:bits``; with fp32 scales at g128: int3 = 3.25 bits, int4 = 4.25 bits,
   BCQ 3-bit = 3.75 bits, three alphas per group), so they go
   through the same ``apply_precision`` path and byte count.
4. Every plan goes through ``lowbit.apply_precision`` weight-only (no calibration: int8 blocks
   are dequantized in the graph), except the int8 inputs an ``ilp-fast`` plan chose
   (calibrated on the search batches); pruned heads leave the graph. SST-2 as
   ``benchmarks/sst2_probe.py``: the logistic-regression probe (``sst2_probe.Probe``) trained
   once on FP32 mean-pooled embeddings of the first ``--n-train`` train sentences, frozen;
   each variant's dev embeddings (872 sentences, 128 tokens) go through it. Reported: dev
   accuracy, flips vs FP32 with McNemar's p, embedding cosine vs FP32, bytes of the searched
   weights (``plan.total_bytes``: codes + scales as ``apply_precision`` stores them, o
   narrowed by its pruned heads; fp32 for fp blocks) and pruned heads; for searched plans
   the predicted loss (the plan's summed sensitivities: ``0.5 sum F dW^2`` of the
   output-distillation surrogate, measured pruning costs) against the measured one (the
   same surrogate, ``distillation_error`` of the applied plan vs FP32 on the calibration
   batches).

``--json`` gets ``{"meta", "rows"}``; ``--keep-rows`` copies the searched rows of an earlier
``--json`` whose method this run does not run (marked with that run's command and date), so
methods can run in separate invocations.

Everything in the output comes from the run; ``--out`` replaces the section between
``<!-- minilm-mixed-precision:begin -->`` and ``<!-- minilm-mixed-precision:end -->``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import pickle
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_word_bits import save_json
from sst2_probe import (
    Probe,
    SortedBatches,
    compare,
    embed_fx,
    replace_section,
    run_footer,
    sha256,
    start_run,
)

import lowbit
from lowbit.data import read_sst2, shared_data_dir, text_batches
from lowbit.errors import ConfigError
from lowbit.mixed_precision import plan_for_budget, sensitivity_table
from lowbit.mixed_precision_dnas import search_precision_dnas
from lowbit.mixed_precision_latency import measure_latency
from lowbit.models import load_minilm
from lowbit.models.minilm import MINILM_SHA256
from lowbit.search import Budget, PerHead, PrecisionPlan, SearchSpace
from lowbit.search.sensitivity import distillation_error

MARKER = "minilm-mixed-precision"
SEQ = 128


def log(msg: str) -> None:
    print(msg, flush=True)


def uniform_plan(template: PrecisionPlan, code: str, bits: int) -> PrecisionPlan:
    """``template``'s subgroups, every one stored as ``code`` at ``bits`` (nothing pruned)."""
    return dataclasses.replace(template, budget_bytes=None, entries=tuple(
        dataclasses.replace(e, code=code, bits=bits, pruned=False, sensitivity=None, act="fp")
        for e in template.entries), info={"method": f"uniform {code}{bits}"})


def kept_rows(path: pathlib.Path | None, methods: list[str]) -> list[dict]:
    """The searched rows of ``path`` (an earlier ``--json``) whose method this run does not
    run, each with ``kept_from``: that run's command and date."""
    if path is None:
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    meta = {"command": data["meta"]["command"], "date": data["meta"]["date"]}
    return [{**r, "kept_from": r.get("kept_from", meta)} for r in data["rows"]
            if r.get("method") not in ("fp", "uniform", *methods)]


def heads_only(table):
    """``table`` with the pruned candidate offered to tied subgroups (heads) only: the graph is
    captured with dynamic batch and length, and ``apply_precision`` replaces a linear pruned
    whole by its bias only at a static output shape."""
    sens = table.sensitivity.copy()
    col = [c.pruned for c in table.candidates]
    untied = [sg.tie is None for sg in table.subgroups]
    sens[np.ix_(untied, col)] = np.inf
    return dataclasses.replace(table, sensitivity=sens)


def formats(plan: PrecisionPlan) -> str:
    """Share of weight elements per candidate label, largest first."""
    tot = collections.Counter()
    for e in plan.entries:
        tot[e.candidate.label(plan.space.symmetric)] += e.elements
    return ", ".join(f"{c} {100 * n / plan.elements:.0f}%" for c, n in tot.most_common())


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",") if x.strip()],
                   default=[3.25, 4.25], help="average stored bits per searched weight")
    p.add_argument("--methods", default="ilp,ilp-taylor,dnas")
    p.add_argument("--uniform", default="uniform:3,bcq:3,uniform:4",
                   help="uniform baselines, code:bits, comma-separated")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--probes", type=int, default=6)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--n-train", type=int, default=8000, help="probe training sentences")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/minilm_mixed_precision"))
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--json", type=pathlib.Path, default=None)
    p.add_argument("--keep-rows", type=pathlib.Path, default=None)
    p.add_argument("--latency-m", type=int, default=1024,
                   help="tokens per call the kernels are timed at (ilp-fast; 16 x 64)")
    p.add_argument("--latency-db", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/minilm_mixed_precision/tuning"),
                   help="tuning database folder the kernel times are kept in (ilp-fast)")
    p.add_argument("--reuse-table", action="store_true",
                   help="load the sensitivity table an earlier run saved in --work")
    return p.parse_args(argv)


def method_of(name: str) -> str:
    return "fp" if name == "FP32" else name.split(" ")[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    command, started, t_start, machine = start_run("minilm_mixed_precision.py", argv, args.threads)
    methods = [m for m in args.methods.split(",") if m]
    uniforms = [(c, int(b)) for c, b in (u.split(":") for u in args.uniform.split(",") if u)]

    train_texts, train_labels = read_sst2("train")
    dev_texts, dev_labels = read_sst2("dev")
    y_dev = torch.tensor(dev_labels)
    model, tok = load_minilm(quiet=True)
    calib = list(text_batches(tok, train_texts[:args.calib], batch_size=8, seq_len=args.seq))
    gm = lowbit.capture(model, calib[0], dynamic=True)
    dev = SortedBatches(tok, dev_texts, args.batch, SEQ)

    t = time.perf_counter()
    train = SortedBatches(tok, train_texts[:args.n_train], args.batch * 2, SEQ)
    fp_emb_train = embed_fx(model, train)
    probe = Probe(fp_emb_train.shape[1]).fit(fp_emb_train, torch.tensor(
        train_labels[:args.n_train]))
    log(f"probe: {args.n_train} train sentences, train acc "
        f"{100 * probe.info['train_acc']:.2f}%, {time.perf_counter() - t:.0f} s")

    fp_emb = embed_fx(gm, dev)
    fp_pred = probe.predict(fp_emb)
    rows = [{"name": "FP32", "method": "fp", "budget": None,
             "m": compare(fp_emb, fp_emb, fp_pred, fp_pred, y_dev)}]
    meta = {"command": command, "date": started.strftime("%Y-%m-%d %H:%M UTC")}

    def write_json() -> None:
        save_json(args.work / "results.json", rows)
        if args.json is not None:
            save_json(args.json, {"meta": meta, "rows": rows})
    log(f"FP32: acc {rows[0]['m']['acc']:.2f}%")
    gran, space = PerHead(), SearchSpace()

    def evaluate(name: str, budget, plan: PrecisionPlan, search_s: float) -> None:
        t = time.perf_counter()
        try:
            qgm = lowbit.apply_precision(gm, plan, progress=False,
                                         calibration=calib if plan.activations else None)
        except ConfigError as e:
            log(f"{name}: {e}")
            rows.append({"name": name, "method": method_of(name), "budget": budget,
                         "failed": str(e)})
            save_json(args.work / f"plan_{name.replace(' ', '_')}.json", plan.to_dict())
            write_json()
            return
        t_apply = time.perf_counter() - t
        with torch.no_grad():
            measured = sum(distillation_error(qgm(**b), ref) for b, ref in zip(calib, calib_ref))
        measured /= len(calib)
        x = embed_fx(qgm, dev)
        pred = probe.predict(x)
        pruned = [e for e in plan.entries if e.pruned]
        heads = sum(e.role == "attn.q" for e in pruned) if pruned else 0
        row = {"name": name, "method": method_of(name), "budget": budget,
               "bytes": plan.total_bytes, "predicted": plan.info.get("sensitivity"),
               "measured": measured,
               "bits": plan.average_bits, "pruned": len(pruned),
               "pruned_heads": heads, "formats": formats(plan), "search_s": search_s,
               "apply_s": t_apply, "eval_s": time.perf_counter() - t - t_apply,
               "pruning": {k: v for k, v in qgm.meta.get("lowbit_pruning", {}).items()
                           if isinstance(v, (int, float, str))},
               "info": {k: v for k, v in plan.info.items()
                        if isinstance(v, (int, float, str))},
               "m": compare(x, fp_emb, pred, fp_pred, y_dev)}
        rows.append(row)
        save_json(args.work / f"plan_{name.replace(' ', '_')}.json", plan.to_dict()
                  if hasattr(plan, "to_dict") else {"summary": plan.summary()})
        log(f"{name}: {row['bytes']:,} B, {row['bits']:.3f} bits, {len(pruned)} pruned "
            f"subgroups ({heads} heads), acc {row['m']['acc']:.2f}%, flips {row['m']['flips']},"
            f" cos {row['m']['cos_mean']:.5f}; predicted {row['predicted']}, measured "
            f"{measured:.4g}; search {search_s:.0f} s, apply {t_apply:.0f} s [{row['formats']}]")
        write_json()

    with torch.no_grad():
        calib_ref = [gm(**b) for b in calib]
    rows += kept_rows(args.keep_rows, methods)
    t = time.perf_counter()
    cache = args.work / "table.pkl"
    table = None
    if not {"ilp", "ilp-taylor", "dnas"} & set(methods):
        pass
    elif args.reuse_table and cache.is_file():    # same model, calibration and code: a rerun
        table, t_table = pickle.loads(cache.read_bytes())
        log(f"sensitivity table: reused {cache} (built in {t_table:.0f} s)")
    else:
        table = sensitivity_table(gm, calibration=calib, granularity=gran, space=space)
        t_table = time.perf_counter() - t
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((table, t_table)))
    if table is not None:
        t_taylor = t_table - table.info.get("prune_seconds", 0.0)
        log(f"sensitivity table: {len(table.subgroups)} subgroups x {len(table.candidates)} "
            f"candidates, {t_table:.0f} s")
    template = None
    for b in args.budgets if table is not None else ():
        t = time.perf_counter()
        ilp = plan_for_budget(heads_only(table), Budget(avg_bits=b))
        t_ilp = time.perf_counter() - t
        template = template or ilp
        if "ilp" in methods:
            evaluate(f"ilp @ {b:g}", b, ilp, t_table + t_ilp)
        if "ilp-taylor" in methods:
            t = time.perf_counter()
            plan = plan_for_budget(heads_only(table.priced("taylor")), Budget(avg_bits=b))
            evaluate(f"ilp-taylor @ {b:g}", b, plan, t_taylor + time.perf_counter() - t)
        if "dnas" in methods:
            t = time.perf_counter()
            try:
                dnas = search_precision_dnas(gm, Budget(avg_bits=b), calibration=calib,
                                             granularity=gran, space=space, steps=args.steps,
                                             probes=args.probes)
            except ConfigError as e:
                log(f"dnas @ {b:g}: {e}")
                rows.append({"name": f"dnas @ {b:g}", "budget": b, "failed": str(e)})
            else:
                evaluate(f"dnas @ {b:g}", b, dnas, time.perf_counter() - t)
    if "ilp-fast" in methods:
        first, fast_table = fast_plans(gm, calib, gran, uniforms, args, evaluate)
        template, table = template or first, table or fast_table
    for code, bits in uniforms:
        plan = uniform_plan(template, code, bits)
        label = f"uniform {'int' if code == 'uniform' else 'bcq'}{bits} g{space.group}"
        evaluate(label, None, plan, 0.0)

    wall = time.perf_counter() - t_start
    section = render(rows, args, command, started, wall, machine, dev, probe, table)
    log("\n" + section)
    if args.out is not None:
        from gemma_mixed_precision import keep_tvm_block
        replace_section(args.out, keep_tvm_block(args.out, section, f"{MARKER}-tvm",
                                                 "minilm_mixed_precision_tvm.py"), MARKER)
        log(f"\nwrote the {MARKER} section of {args.out}")
    return 0


def fast_plans(gm, calib, gran, uniforms, args, evaluate):
    """The ``ilp-fast`` rows (module docstring, step 3); returns a plan to template the uniform
    ones and the table."""
    space = SearchSpace(activations=("fp", "int8"))
    t = time.perf_counter()
    cache = args.work / "table_acts.pkl"
    if args.reuse_table and cache.is_file():
        table, t_built = pickle.loads(cache.read_bytes())
        t -= t_built                       # search time counts the table as built
        log(f"sensitivity table (inputs too): reused {cache} (built in {t_built:.0f} s)")
    else:
        table = sensitivity_table(gm, calibration=calib, granularity=gran, space=space)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((table, time.perf_counter() - t)))
    # the whole linears and one subgroup's rows: a kernel call's fixed cost (latency_model)
    shapes = sorted({(sg.out_features, sg.in_features) for sg in table.subgroups} |
                    {(sg.rows[1] - sg.rows[0], sg.in_features) for sg in table.subgroups})
    lat = measure_latency(shapes, args.latency_m, table.candidates, space,
                                 target="cpu", db=args.latency_db)
    timed = heads_only(table.with_latency(lat, args.latency_m))
    t_table = time.perf_counter() - t
    template = plan_for_budget(timed, Budget(avg_bits=max(args.budgets)))
    limit = {b: Budget(avg_bits=b).to_bytes(table.elements) for b in args.budgets}
    for b in args.budgets:
        ref = [(timed.latency_of(p), p) for p in (uniform_plan(template, c, bits)
                                                  for c, bits in uniforms)
               if p.total_bytes <= limit[b]]
        if not ref:
            log(f"ilp-fast @ {b:g}: no uniform plan within {limit[b]:,} bytes to match")
            continue
        cap, like = max(ref, key=lambda r: r[1].total_bytes)
        t = time.perf_counter()
        plan = plan_for_budget(timed, Budget(avg_bits=b, seconds=cap))
        code, bits = like.entries[0].code, like.entries[0].bits
        label = f"uniform {'int' if code == 'uniform' else 'bcq'}{bits} g{space.group}"
        plan = dataclasses.replace(plan, info={**plan.info, "latency_of": label})
        evaluate(f"ilp-fast @ {b:g}", b, plan, t_table + time.perf_counter() - t)
    return template, table


def _fmt(r: dict, fp: float, n: int) -> str:
    if "failed" in r:
        return f"| {r['name']} | - | - | - | - | - | - | - | - | - | failed: {r['failed']} |"
    m = r["m"]
    if "bytes" not in r:
        return (f"| {r['name']} | fp32 | - | 32 | - | {m['acc']:.2f} | - | - | - | 1 | - |")
    loss = "" if r.get("predicted") is None else (
        f"; loss predicted {r['predicted']:.3g}, measured {r['measured']:.3g}")
    if r.get("predicted") is None and r.get("measured") is not None:
        loss = f"; loss measured {r['measured']:.3g}"
    info = r.get("info", {})
    if info.get("latency_seconds") is not None:
        loss += (f"; kernel time {1e3 * info['latency_seconds']:.2f} ms of "
                 f"{1e3 * info['latency_budget']:.2f} ({info.get('latency_of', '?')})")
    kept = " †" if "kept_from" in r else ""
    return (f"| {r['name']}{kept} | {r['formats']} | {r['bytes']:,} | {r['bits']:.3f} "
            f"| {r['pruned_heads']} | {m['acc']:.2f} | {m['acc'] - fp:+.2f} "
            f"| {m['flips']} ({100 * m['flips'] / n:.1f}%) | {m['broke']} / {m['fixed']} "
            f"| {m['cos_mean']:.5f} | p {m['p']:.2g}; search {r['search_s']:.0f} s{loss} |")


def kept_note(rows) -> list[str]:
    kept = {(r["kept_from"]["command"], r["kept_from"]["date"]) for r in rows if "kept_from" in r}
    return ["", *(f"† not re-run here: from the run of {d} (`{c}`)."
                  for c, d in sorted(kept))] if kept else []


def render(rows, args, command, started, wall, machine, dev, probe, table) -> str:
    fp = rows[0]["m"]["acc"]
    data = shared_data_dir() / "sst2_dev.tsv"
    elements = table.elements
    return "\n".join([
        ("## all-MiniLM-L6-v2: mixed-precision plans vs uniform, SST-2 accuracy vs bytes "
         "(`benchmarks/minilm_mixed_precision.py`)"),
        "",
        (f"Searched weights: the {len(table.subgroups)} per-head / per-linear subgroups of the "
         f"encoder's linears ({elements:,} weights; {32 * elements / 8 / 1e6:.2f} MB in fp32); "
         f"embeddings and LayerNorms stay fp32. Default `SearchSpace` ({{pruned, 2, 3, 4, 8}} "
         f"x {{uniform symmetric, BCQ}} + fp32, group 128, fp32 scales). Search calibration: "
         f"the first {args.calib} SST-2 train sentences, batches of 8, {args.seq} tokens; "
         f"`ilp` = one `sensitivity_table` (Fisher of the output-distillation surrogate; the "
         f"pruned candidate priced by its measured loss increase, `prune_cost=\"measured\"`, "
         f"{table.info.get('prune_units', '?')} pruning units) + `plan_for_budget` (HiGHS) per "
         f"budget; `ilp-taylor` = the same table with pruning priced by the Taylor estimate "
         f"(`table.priced(\"taylor\")`); both offer pruning to heads only (a linear pruned "
         f"whole becomes its bias, which `apply_precision` can do only at a static shape, and "
         f"this capture is dynamic); `dnas` = `search_precision_dnas` "
         f"({args.steps} steps x {args.probes} lambda probes, output-distillation loss); "
         f"`ilp-fast` = the integer program over a space that also offers int8 inputs "
         f"(int8 weights per channel + static u8 input: the W8A8 kernel; calibrated on the "
         f"search batches) under a latency budget too: the summed kernel time, measured in "
         f"TVM on this CPU per shape and candidate at {args.latency_m} tokens per call "
         f"(`mixed_precision_latency.measure_latency`; the whole linear and one head's rows, "
         f"so a kernel call's fixed cost is counted once per block of consecutive heads of "
         f"one format: `lowbit.search.latency_model`), of the largest uniform plan within the "
         f"bytes; "
         f"uniform rows = PrecisionPlans of the same subgroups with one format everywhere. "
         f"Every plan is applied with `lowbit.apply_precision` weight-only (int8 blocks "
         f"dequantized in the graph; pruned heads removed from the graph)."),
        "",
        (f"SST-2 dev ({dev.n} sentences, {SEQ} tokens) through the frozen probe of "
         f"`sst2_probe.py` (logistic regression on FP32 mean-pooled embeddings of the first "
         f"{args.n_train} train sentences; train accuracy {100 * probe.info['train_acc']:.2f}%)."),
        "",
        ("| plan | formats (share of weights) | bytes | bits/weight | pruned heads | "
         "accuracy % | Δ vs FP32 | flips vs FP32 | broke / fixed | mean cos | note |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        _fmt(rows[0], fp, dev.n),
        *[_fmt(r, fp, dev.n) for r in sorted(rows[1:], key=lambda r: r.get("bytes", 0))],
        "",
        ("bytes = `plan.total_bytes` of the searched weights as `apply_precision` stores them "
         "(codes + fp32 scales; fp blocks at 4 bytes; pruned heads 0, and the output "
         "projection at the width its kept heads leave it, in the finer group that width may "
         "need: `lowbit.search.Link`); bits/weight = 8 x bytes / searched weights; pruned heads = "
         "attention heads pruned (q/k/v rows and the o columns leave the graph); flips = dev "
         "predictions that differ from FP32's; broke / fixed = FP32 right and the plan wrong / "
         "the reverse; p = exact two-sided McNemar test of broke vs fixed; mean cos = mean "
         "cosine of the sentence embeddings to FP32's; search = seconds of the search (ilp: the "
         "shared sensitivity table + the solve); loss predicted = the plan's summed "
         "sensitivities (the search's estimate of the output-distillation error `0.5 sum_o "
         "mean((o - o_fp32)^2)`), measured = that error of the applied plan on the "
         f"{args.calib} calibration sentences. One dev sentence is {100 / dev.n:.2f} points "
         "of accuracy."),
        *kept_note(rows),
        "",
        *run_footer(command, started, wall, machine, args.threads),
        (f"- model: all-MiniLM-L6-v2 sha256 {MINILM_SHA256[:16]}…; data: sst2_dev.tsv sha256 "
         f"{sha256(data)[:16]}…"),
    ])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"minilm_mixed_precision: {e}")
