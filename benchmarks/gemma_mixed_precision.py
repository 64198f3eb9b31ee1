#!/usr/bin/env python
"""wikitext-2 perplexity vs bytes of Gemma-3-270M under mixed-precision plans (integer program,
DNAS) against uniform plans over the same subgroups (issue 17, the Gemma table).

    python benchmarks/gemma_mixed_precision.py [--budgets 3.25,4.25,5.0]
        [--dnas-budgets 4.25] [--dnas-noprune-budgets 3.25,4.25,5.0] [--steps 24]
        [--probes 5] [--lambda-start 1] [--calib-windows 32] [--dnas-batches 16]
        [--neurons 256] [--ilp-loss lm] [--prune-batches 8] [--prune-margin 1]
        [--uniform uniform:8,uniform:4,uniform:3,bcq:3]
        [--methods ilp,ilp-mean,ilp-taylor,dnas,dnas-noprune] [--threads 2]
        [--keep-rows benchmarks/results/gemma_mixed_precision.json]
        [--json benchmarks/results/gemma_mixed_precision.json] [--out docs/accuracy.md]
        [--pricing-json benchmarks/results/gemma_mixed_precision_pricing.json]

1. Gemma-3-270M base (``lowbit.models.load_gemma``, fp32), captured twice with the same
   parameter names: at ``--ctx`` tokens for evaluation and at ``--train-ctx`` tokens for the
   search. Text splits as ``benchmarks/gemma_bcq_ppl.py``: evaluation = the first
   ``ceil(tokens / (ctx - 1))`` chunks of ``wikitext2_test_raw.txt`` (``[BOS] + chunk``,
   every token scored, ``gemma_ppl.perplexity``); search calibration = ``--calib-windows``
   windows of ``--train-ctx`` tokens from the end of the same file (disjoint; the run checks).
2. Searched weights: every linear of the 18 decoder blocks (``DEFAULT_ROLES``); q/k/v split
   per attention head (``PerHead()``: Gemma-3-270M has 4 q heads and 1 kv head, so the kv
   head ties all four q heads and a pruned "head" removes the block's whole attention, so o
   joins that tie: ``join_dead_linears``), up and gate in blocks of ``--neurons`` FFN neurons
   (``PerNeurons``, pruned together), o and down whole. The tied 262144 x 640 embedding / LM head stays fp32 and is not counted in the
   bytes (the per-word issue covers it). Default ``SearchSpace`` ({pruned, 2, 3, 4, 8} x
   {uniform symmetric, BCQ} + fp32, group 128, fp32 scales).
3. Plans per ``Budget(avg_bits)``: ``ilp`` = ``plan_for_budget`` on one
   ``sensitivity_table`` shared by all budgets (Fisher of ``--ilp-loss``: ``lm`` = next-token
   cross-entropy per token on the calibration windows via
   ``lowbit.mixed_precision.lm_token_losses``, random signs, or ``distillation`` = the
   output-distillation surrogate; the pruned candidate priced by its measured loss increase
   on the first ``--prune-batches`` windows plus ``--prune-margin`` standard errors,
   ``prune_cost="measured"``; then HiGHS); ``ilp-mean`` = the same table priced at the
   measured mean alone (``priced("measured", margin=0)``); ``ilp-taylor`` = the same table
   with the pruned candidate priced by the Taylor estimate ``0.5 sum F W^2``
   (``priced("taylor")``); ``dnas`` =
   ``search_precision_dnas`` (the default output-distillation loss against the fp32 logits,
   ``--steps`` Adam steps per lambda probe, ``--probes`` probes from ``--lambda-start``, on the
   first ``--dnas-batches`` calibration windows; probes are checkpointed in
   ``--work/dnas/<method>`` and a probe at a lambda already run for another budget is reused); ``dnas-noprune`` = the same
   search over the space without the pruned candidate (``SearchSpace(bits=(2, 3, 4, 8))``),
   see 5. Uniform baselines: the ilp
   plan's subgroups with one candidate everywhere (``--uniform code:bits``; at g128 with fp32
   scales int8 = 8.25, int4 = 4.25, int3 = 3.25, BCQ3 = 3.75 bits per weight).
4. Every plan goes through ``lowbit.apply_precision`` weight-only on the evaluation capture
   (pruned attentions / neuron blocks leave the graph; int8 blocks dequantized in the graph),
   then perplexity. Plans are saved as JSON in ``--work`` (``plan_<name>.json``; the TVM
   script ``benchmarks/gemma_mixed_precision_tvm.py`` reads them).
5. Scale check (why DNAS and pruning do not mix on Gemma-3): DNAS relaxes "pruned" as a zero
   weight in the mixture, so a subgroup's pruned probability p only scales its weight by
   ``1 - p``. Gemma-3 normalises q and k per head (q_norm, k_norm) and the attention's output
   (post-attention RMSNorm), so scaling an attention's q, k, v, o should not reach the loss.
   The run measures it on the search capture: the logits' max relative change when every
   block's q, k, v, o weights (then up and down, then gate) are multiplied by 0.5.

Everything in the output comes from the run, except rows of methods not run this time that
``--keep-rows`` copies from an earlier results file (marked, with that run's command and date);
``--pricing-json`` gets every pruning unit's measured and Taylor price; ``--json`` gets the rows
and the run's settings,
``--out`` replaces the section between ``<!-- gemma-mixed-precision:begin -->`` and
``<!-- gemma-mixed-precision:end -->`` (an inner ``gemma-mixed-precision-tvm`` block, written
by the TVM script, is kept as it is).
"""

from __future__ import annotations

import argparse
import collections
import math
import pathlib
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_ppl import DATA, perplexity, windows
from gemma_word_bits import save_json
from minilm_mixed_precision import formats, kept_rows, uniform_plan
from sst2_probe import cpu_flags, replace_section, run_footer, sha256, start_run

import lowbit
from lowbit.data import shared_data_dir
from lowbit.errors import ConfigError
from lowbit.mixed_precision import lm_token_losses, plan_for_budget, sensitivity_table
from lowbit.mixed_precision_dnas import search_precision_dnas
from lowbit.mixed_precision_prune import Removal, removal, removal_losses
from lowbit.models import GEMMA_SHA256, load_gemma
from lowbit.passes.subgroups import list_subgroups
from lowbit.search import Budget, PerHead, PerNeurons, PrecisionPlan, SearchSpace
from lowbit.train.loop import TrainingError

MARKER = "gemma-mixed-precision"
TVM_MARKER = "gemma-mixed-precision-tvm"
REPO = pathlib.Path(__file__).resolve().parents[1]
PLOT = "docs/img/mixed_precision_pareto.png"
PLOT_CMD = "python benchmarks/plot_mixed_precision.py"
NOPRUNE = SearchSpace(bits=(2, 3, 4, 8))     # the default space without the pruned candidate


def log(msg: str) -> None:
    print(msg, flush=True)


def next_token_loss(outputs, batch: torch.Tensor) -> torch.Tensor:
    """``lm_token_losses`` (per token: the Fisher keeps the loss's units) on a batch given as
    one [1, T] id tensor (as the captured graph takes it)."""
    return lm_token_losses(outputs, {"input_ids": batch})


def plan_file(work: pathlib.Path, name: str) -> pathlib.Path:
    return work / f"plan_{re.sub(r'[^A-Za-z0-9.]+', '_', name)}.json"


def pruning(plan: PrecisionPlan) -> dict:
    """Pruned subgroups of ``plan``: q heads (of all), whole attentions, FFN neuron blocks."""
    pruned = [e for e in plan.entries if e.pruned]
    attn = {e.tie for e in pruned if e.role == "attn.q"}
    return {"pruned": len(pruned), "pruned_heads": sum(e.role == "attn.q" for e in pruned),
            "heads": sum(e.role == "attn.q" for e in plan.entries),
            "pruned_attentions": len(attn),
            "pruned_neuron_blocks": sum(e.role == "ffn.in" for e in pruned),
            "neuron_blocks": sum(e.role == "ffn.in" for e in plan.entries),
            "pruned_by_role": dict(collections.Counter(e.role for e in pruned))}


def scale_check(gm, batch: torch.Tensor, factor: float = 0.5) -> dict:
    """Logits' max relative change (max |f' - f| / max |f|) when the weights of the given roles
    in every block are multiplied by ``factor`` (module docstring, 5)."""
    roles = {r: [sg.weight for sg in list_subgroups(gm) if sg.role in rs]
             for r, rs in (("attention q, k, v, o", ("attn.q", "attn.k", "attn.v", "attn.o")),
                           ("ffn up, down", ("ffn.in", "ffn.out")), ("ffn gate", ("ffn.gate",)))}
    params = dict(gm.named_parameters())
    with torch.no_grad():
        ref = gm(batch).logits
        out = {}
        for name, weights in roles.items():
            scaled = {**params, **{w: params[w] * factor for w in weights}}
            got = torch.func.functional_call(gm, scaled, (batch,)).logits
            out[name] = float((got - ref).abs().max() / ref.abs().max())
    return out


def parse_args(argv):
    floats = lambda s: [float(x) for x in s.split(",") if x.strip()]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=floats, default=[3.25, 4.25, 5.0],
                   help="average stored bits per searched weight (ilp)")
    p.add_argument("--dnas-budgets", type=floats, default=[4.25],
                   help="DNAS over the full space (pruning allowed)")
    p.add_argument("--dnas-noprune-budgets", type=floats, default=[3.25, 4.25, 5.0],
                   help="DNAS over the space without the pruned candidate")
    p.add_argument("--methods", default="ilp,ilp-mean,ilp-taylor,dnas,dnas-noprune")
    p.add_argument("--prune-batches", type=int, default=8,
                   help="calibration windows the measured pruning cost runs on")
    p.add_argument("--prune-margin", type=float, default=1.0,
                   help="standard errors added to each measured pruning price (ilp)")
    p.add_argument("--plans-from", type=pathlib.Path, default=None,
                   help="also evaluate the saved plans DIR/plan_<method>_<bits>.json as rows "
                        "'<method> @ <bits>' (scripts/gpu_gemma_dnas.py writes them); with "
                        "--methods '' only those (and FP32), no sensitivity table")
    p.add_argument("--keep-rows", type=pathlib.Path, default=None,
                   help="copy the rows of methods not run from this earlier results file")
    p.add_argument("--pricing-json", type=pathlib.Path, default=None,
                   help="every pruning unit's measured and Taylor price")
    p.add_argument("--uniform", default="uniform:8,uniform:4,uniform:3,bcq:3",
                   help="uniform baselines, code:bits, comma-separated")
    p.add_argument("--ilp-loss", choices=("lm", "distillation"), default="lm")
    p.add_argument("--steps", type=int, default=24, help="DNAS Adam steps per lambda probe")
    p.add_argument("--probes", type=int, default=5, help="DNAS lambda probes per budget")
    p.add_argument("--lambda-start", type=float, default=1.0)
    p.add_argument("--neurons", type=int, default=256, help="FFN neurons per subgroup")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--dnas-batches", type=int, default=16)
    p.add_argument("--train-ctx", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/gemma_mixed_precision"))
    p.add_argument("--json", type=pathlib.Path, default=None)
    p.add_argument("--out", type=pathlib.Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command, started, t_start, machine = start_run("gemma_mixed_precision.py", argv,
                                                   args.threads)
    methods = [m for m in args.methods.split(",") if m]
    uniforms = [(c, int(b)) for c, b in (u.split(":") for u in args.uniform.split(",") if u)]

    lm, tok = load_gemma()
    bos = lm.config.bos_token_id
    text_path = shared_data_dir() / DATA
    ids = tok(text_path.read_text(encoding="utf-8"), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    n = args.ctx - 1
    n_eval = math.ceil(args.tokens / n)
    eval_wins = windows(ids[:n_eval * n], args.ctx, bos)
    m = args.train_ctx - 1
    calib_start = len(ids) - args.calib_windows * m
    if calib_start < n_eval * n:
        sys.exit("calibration and evaluation text overlap: fewer --calib-windows or --tokens")
    calib = windows(ids[calib_start:], args.train_ctx, bos)
    split = {"tokens": len(ids), "eval": [0, n_eval * n - 1], "eval_windows": len(eval_wins),
             "calib": [calib_start, len(ids) - 1], "calib_windows": len(calib)}
    log(f"{DATA}: {len(ids)} tokens; eval tokens 0..{n_eval * n - 1} ({len(eval_wins)} x "
        f"{args.ctx}); calibration tokens {calib_start}..{len(ids) - 1} ({len(calib)} x "
        f"{args.train_ctx})")
    gm = lowbit.capture(lm, (eval_wins[0],))
    gm_s = lowbit.capture(lm, (calib[0],))
    gran, space = (PerHead(), PerNeurons(args.neurons)), SearchSpace()

    fp = perplexity(gm, eval_wins, "FP32")
    rows = [{"name": "FP32", "method": "fp", "budget": None, **fp}]
    log(f"FP32: perplexity {fp['ppl']:.3f}")
    scales = scale_check(gm_s, calib[0])
    log("scale check (logits' max relative change, weights x 0.5 in every block): "
        + ", ".join(f"{k} {v:.2e}" for k, v in scales.items()))

    def write_json() -> None:
        meta = {"command": command, "date": f"{started:%Y-%m-%d %H:%M} UTC",
                "wall_s": time.perf_counter() - t_start, "machine": machine,
                "cpu_flags": cpu_flags(), "threads": args.threads, "split": split,
                "scale_check": scales,
                "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v)
                             for k, v in vars(args).items()},
                "granularity": repr(gran), "space": space.to_dict(),
                "model_sha256": GEMMA_SHA256, "data_sha256": sha256(text_path)}
        for path in (args.work / "results.json", args.json):
            if path is not None:
                save_json(path, {"meta": meta, "rows": rows})

    def evaluate(name: str, method: str, budget, plan: PrecisionPlan, search_s: float,
                 extra: dict | None = None) -> None:
        plan.save(plan_file(args.work, name))
        t = time.perf_counter()
        qgm = lowbit.apply_precision(gm, plan, progress=False)
        t_apply = time.perf_counter() - t
        res = perplexity(qgm, eval_wins, name)
        params = {k: v for k, v in qgm.meta.get("lowbit_pruning", {}).items()
                  if k in ("params_before", "params_after")}
        del qgm
        pr = pruning(plan)
        row = {"name": name, "method": method, "budget": budget, "bytes": plan.total_bytes,
               "bits": plan.average_bits, "elements": plan.elements, **pr,
               "formats": formats(plan), "search_s": search_s, "apply_s": t_apply, **res,
               "params": params, **(extra or {}),
               "info": {k: v for k, v in plan.info.items()
                        if isinstance(v, (int, float, str)) or k == "probes"}}
        rows.append(row)
        log(f"{name}: {row['bytes']:,} B, {row['bits']:.3f} bits, {pr['pruned']} pruned "
            f"subgroups ({pr['pruned_heads']} q heads, {pr['pruned_neuron_blocks']} neuron "
            f"blocks), perplexity {res['ppl']:.3f}; search {search_s:.0f} s, apply "
            f"{t_apply:.0f} s [{row['formats']}]")
        write_json()

    rows += kept_rows(args.keep_rows, methods)
    for path in sorted(args.plans_from.glob("plan_*.json")) if args.plans_from else ():
        saved = PrecisionPlan.load(path)
        method, _, b = path.stem[len("plan_"):].rpartition("_")
        evaluate(f"{method} @ {b}", method, float(b), saved, saved.info.get("seconds", 0.0),
                 {"plan_file": str(path)})
    if not methods:                  # --plans-from alone: its rows, no table
        write_json()
        return 0
    t = time.perf_counter()
    table = sensitivity_table(gm_s, calibration=calib, granularity=gran, space=space,
                              loss_fn=next_token_loss if args.ilp_loss == "lm" else None,
                              prune_cost="measured" if "ilp" in methods else "taylor",
                              prune_batches=args.prune_batches, prune_margin=args.prune_margin)
    t_table = time.perf_counter() - t
    t_taylor = t_table - table.info.get("prune_seconds", 0.0)
    log(f"sensitivity table: {len(table.subgroups)} subgroups x {len(table.candidates)} "
        f"candidates, {table.elements:,} weights, {t_table:.0f} s (pruning measured: "
        f"{t_table - t_taylor:.0f} s)")
    if args.pricing_json is not None:
        save_json(args.pricing_json, pricing(table, command, started))
    template = None
    for b in args.budgets:
        variants = [("ilp", table, t_table), ("ilp-taylor", table.priced("taylor"), t_taylor)]
        if "ilp-mean" in methods:
            variants.append(("ilp-mean", table.priced("measured", margin=0.0), t_table))
        for method, tab, t_tab in variants:
            if method not in methods and template is not None:
                continue
            t = time.perf_counter()
            plan = plan_for_budget(tab, Budget(avg_bits=b))
            template = template or plan
            if method in methods:
                search_s = t_tab + time.perf_counter() - t
                joint = joint_check(gm_s, tab, plan, calib[:args.prune_batches])
                evaluate(f"{method} @ {b:g}", method, b, plan, search_s,
                         {"joint": joint} if joint else None)
    runs = [("dnas", b, space) for b in args.dnas_budgets if "dnas" in methods]
    runs += [("dnas-noprune", b, NOPRUNE) for b in args.dnas_noprune_budgets
             if "dnas-noprune" in methods]
    for method, b, sp in runs:
        t, name = time.perf_counter(), f"{method} @ {b:g}"
        try:
            dnas = search_precision_dnas(gm_s, Budget(avg_bits=b),
                                         calibration=calib[:args.dnas_batches],
                                         granularity=gran, space=sp, steps=args.steps,
                                         probes=args.probes, lambda_start=args.lambda_start,
                                         checkpoint=args.work / "dnas" / method)
        except (ConfigError, TrainingError) as e:
            log(f"{name}: {e}")
            rows.append({"name": name, "method": method, "budget": b,
                         "failed": str(e), "search_s": time.perf_counter() - t})
            write_json()
        else:
            evaluate(name, method, b, dnas, time.perf_counter() - t)
    for code, bits in uniforms:
        label = f"uniform {'int' if code == 'uniform' else 'bcq'}{bits} g{space.group}"
        evaluate(label, "uniform", None, uniform_plan(template, code, bits), 0.0)

    wall = time.perf_counter() - t_start
    write_json()
    section = render(rows, args, command, started, wall, machine, split, table, scales)
    log("\n" + section)
    if args.out is not None:
        replace_section(args.out, keep_tvm_block(args.out, section), MARKER)
        log(f"\nwrote the {MARKER} section of {args.out}")
    return 0


def joint_check(gm, table, plan: PrecisionPlan, batches) -> dict | None:
    """Additivity of the pruning a plan chose: the loss increase (mean next-token loss on
    ``batches``, float) with all its pruned units removed together, against the sum of their
    single measured increases and of the prices the plan paid."""
    units = [u for u in table.units if plan.entries[u.subgroups[0]].pruned]
    if not units:
        return None
    t = time.perf_counter()
    rems = [removal(gm, list(table.subgroups), u.subgroups, table.space) for u in units]
    joint = Removal(tuple(z for r in rems for z in r.zero), all(r.structural for r in rems))
    loss = lambda out, ref, b: float(next_token_loss(out, b).double().mean())
    d = removal_losses(gm, [joint], batches, lambda g, b: g(b), loss, progress=False)[0]
    paid = sum(float(plan.entries[i].sensitivity) for u in units for i in u.subgroups)
    out = {"units": len(units), "sum_single": sum(u.mean for u in units), "paid": paid,
           "together": float(d.mean()), "batches": len(batches),
           "seconds": time.perf_counter() - t}
    log(f"  pruned units removed together: +{out['together']:.3f} nats on {len(batches)} "
        f"windows; sum of single removals +{out['sum_single']:.3f}; priced {paid:.3f}")
    return out


def unit_kind(table, unit) -> str:
    """What a pruning unit removes: an attention's heads, an FFN neuron block, a whole linear."""
    roles = {table.subgroups[i].role for i in unit.subgroups}
    if "attn.q" in roles:
        return "attention heads"
    if "ffn.in" in roles and len(unit.subgroups) > 1:
        return "FFN neuron block"
    return f"whole {'/'.join(sorted(roles))}"


def pricing(table, command: str, started) -> dict:
    """Every measured pruning unit: kind, subgroups, bytes it frees at the table's int4, the
    measured price (mean, standard error over windows) and the Taylor estimate."""
    int4 = next(j for j, c in enumerate(table.candidates) if c.code == "uniform" and c.bits == 4)
    units = [{"kind": unit_kind(table, u), "subgroups": [table.subgroups[i].name
                                                          for i in u.subgroups],
              "int4_bytes": int(table.nbytes[list(u.subgroups), int4].sum()),
              "cost": u.cost, "mean": u.mean, "se": u.se, "taylor": u.taylor,
              "structural": u.structural} for u in table.units]
    return {"command": command, "date": f"{started:%Y-%m-%d %H:%M} UTC",
            "info": {k: v for k, v in table.info.items() if isinstance(v, (int, float, str))},
            "units": units}


def keep_tvm_block(path: pathlib.Path, section: str, marker: str = TVM_MARKER,
                   script: str = "gemma_mixed_precision_tvm.py") -> str:
    """``section`` followed by the ``marker`` block (default ``gemma-mixed-precision-tvm``)
    already in ``path`` (or an empty one for the TVM ``script`` to fill)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin in text and end in text:
        block = text[text.index(begin):text.index(end) + len(end)]
    else:
        block = (f"{begin}\n_(TVM: not run yet; `python benchmarks/{script} "
                 f"--out docs/accuracy.md`)_\n{end}")
    return f"{section.rstrip()}\n\n{block}\n"


def _fmt(r: dict, fp: float) -> str:
    if "failed" in r:
        return (f"| {r['name']} | - | - | - | - | - | - | {r['search_s']:.0f} "
                f"| failed: {r['failed']} |")
    if "bytes" not in r:
        return f"| {r['name']} | fp32 | - | 32 | - | - | {r['ppl']:.3f} | - | - |"
    d = r["ppl"] / fp
    delta = f"{100 * (d - 1):+.1f}%" if d < 2 else f"x{d:.3g}"
    note = ""
    if r["method"].startswith("ilp") and r["info"].get("loss") == "next_token_loss":
        note = (f"predicted +{r['info']['sensitivity']:.3f} nats, measured "
                f"+{r['nll'] - math.log(fp):.3f}")
        if "joint" in r:
            j = r["joint"]
            note += (f"; its {j['units']} pruned units: priced {j['paid']:.3f}, singly "
                     f"{j['sum_single']:.3f}, together {j['together']:.3f}")
    if r["method"].startswith("dnas"):
        note = (f"lambda {r['info']['lambda']:.3g}; probes (lambda: bits) "
                + ", ".join(f"{lam:.3g}: {8 * nb / r['elements']:.2f}"
                            for lam, nb in r["info"].get("probes", [])))
    name = f"{r['name']} †" if "kept_from" in r else r["name"]
    return (f"| {name} | {r['formats']} | {r['bytes']:,} | {r['bits']:.3f} "
            f"| {r['pruned_heads']} ({r['pruned_attentions']} attn) "
            f"| {r['pruned_neuron_blocks']} / {r['neuron_blocks']} | {r['ppl']:.3f} ({delta}) "
            f"| {r['search_s']:.0f} | {note} |")


def reading(rows: list[dict]) -> list[str]:
    """Per searched plan: the uniform plans at no more bytes, and their perplexities."""
    uni = [r for r in rows if r.get("method") == "uniform" and "ppl" in r]
    out = []
    for r in rows:
        if r.get("method") in ("fp", "uniform") or "ppl" not in r:
            continue
        below = [u for u in uni if u["bytes"] <= r["bytes"]]
        above = [u for u in uni if u["bytes"] > r["bytes"]]
        cmp = []
        if below:
            u = max(below, key=lambda u: u["bytes"])
            cmp.append(f"largest uniform plan at no more bytes: {u['name']} "
                       f"({u['bytes'] / 1e6:.2f} MB) {u['ppl']:.3f}")
        if above:
            u = min(above, key=lambda u: u["bytes"])
            cmp.append(f"smallest larger: {u['name']} ({u['bytes'] / 1e6:.2f} MB) "
                       f"{u['ppl']:.3f}")
        out.append(f"- {r['name']} ({r['bytes'] / 1e6:.2f} MB): perplexity {r['ppl']:.3f}; "
                   + "; ".join(cmp))
    return out


def pricing_lines(table, tokens: int) -> list[str]:
    """Measured vs Taylor price of the pruning units, per kind (the ``ilp`` table; ``tokens``
    scored per calibration window)."""
    if not table.units:
        return []
    int4 = next(j for j, c in enumerate(table.candidates) if c.code == "uniform" and c.bits == 4)
    kinds: dict[str, list] = collections.defaultdict(list)
    for u in table.units:
        kinds[unit_kind(table, u)].append(u)
    med = lambda xs: float(np.median(xs))
    out = [
        (f"**Pricing the pruned candidate.** `ilp` measures it: each of the "
         f"{len(table.units)} pruning units is removed from the float search graph (as "
         f"`apply_precision` removes it: o's / down's input columns zeroed) and the mean "
         f"next-token loss on the first {table.info['prune_batches']} calibration windows "
         f"compared with the full model's ({table.info['prune_seconds']:.0f} s, one forward "
         f"per unit and window; {table.info['prune_below_zero']} unit(s) lowered the loss). "
         f"`ilp` prices a unit at that mean plus {table.info['prune_margin']:g} standard "
         f"error(s) over the windows, clipped at 0 (`prune_margin`: the search picks the units "
         f"that look cheapest, and with few windows some look cheaper than they are); "
         f"`ilp-mean` at the mean; `ilp-taylor` as before, `0.5 sum F W^2`. All use one "
         f"Fisher, of the per-token losses with random signs (`lm_token_losses`: the Taylor "
         f"scores are then in nats, as the measured ones; the previous version squared the "
         f"gradient of the window's mean loss, about 1/{tokens} of that: fine for ranking "
         f"quantization candidates, {tokens} x too cheap next to a measured cost)."),
        "",
        ("| unit | count | int4 bytes each | measured Δloss, nats: median [min, max] | median "
         "s.e. | Taylor estimate: median | measured / Taylor: median [min, max] |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, us in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        cost = [u.mean for u in us]
        ratio = [u.mean / u.taylor for u in us if u.taylor > 0]
        nb = med([table.nbytes[list(u.subgroups), int4].sum() for u in us])
        out.append(f"| {kind} | {len(us)} | {nb:,.0f} | {med(cost):.4f} [{min(cost):.4f}, "
                   f"{max(cost):.4f}] | {med([u.se for u in us]):.4f} "
                   f"| {med([u.taylor for u in us]):.4f} | "
                   + (f"{med(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}] |" if ratio
                      else "- |"))
    return out


def pricing_verdict(rows: list[dict]) -> list[str]:
    """Per budget, the perplexity of each ilp pricing and the pruning units it removed."""
    ilp = [r for r in rows if r.get("method", "").startswith("ilp") and "ppl" in r]
    budgets = sorted({r["budget"] for r in ilp})
    if len({r["method"] for r in ilp}) < 2:
        return []
    parts = []
    for b in budgets:
        at = sorted((r for r in ilp if r["budget"] == b), key=lambda r: r["ppl"])
        parts.append(f"at {b:g} bits " + ", ".join(
            f"{r['method']} {r['ppl']:.1f} ({r.get('joint', {}).get('units', 0)} units pruned)"
            for r in at))
    return ["**The three pricings of one table** (perplexity, lowest first): "
            + "; ".join(parts) + "."]


def kept_lines(rows: list[dict]) -> list[str]:
    """Where the rows marked † come from."""
    runs = {(r["kept_from"]["command"], r["kept_from"]["date"]) for r in rows
            if "kept_from" in r}
    return [f"† not re-run here: copied from the run of {date} (`{cmd}`), with the code of "
            f"that date (DNAS does not use the sensitivity table)." for cmd, date in
            sorted(runs, key=lambda cd: cd[1])]


def dnas_pruning(rows: list[dict], scales: dict) -> list[str]:
    """What the run says about DNAS with the pruned candidate (module docstring, 5)."""
    full = [r for r in rows if r.get("method") == "dnas" and "ppl" in r]
    if not full:
        return []
    fp, attn, ffn = rows[0]["ppl"], scales["attention q, k, v, o"], scales["ffn up, down"]
    worst = max(r["pruned_attentions"] for r in full)
    blocks = sum(r["pruned_neuron_blocks"] for r in full)
    text = ("**DNAS with pruning** (`dnas` rows): "
            + "; ".join(f"{r['name']} pruned {r['pruned_attentions']} of 18 attentions (pruned "
                        "subgroups by role: " + ", ".join(
                            f"{k} {v}" for k, v in r.get("pruned_by_role", {}).items())
                        + f"), perplexity {r['ppl']:.3g} ({r['ppl'] / fp:.3g} x FP32)"
                        for r in full)
            + ". Scale check on the search capture (the logits' max relative change when "
              "every block's weights of a kind are multiplied by 0.5): "
            + ", ".join(f"{k} {v:.2g}" for k, v in scales.items()) + ".")
    if worst and attn < 1e-3:
        text += (" The mixture relaxes \"pruned\" as a zero weight, so an attention's pruned "
                 "probabilities p only scale its q, k, v and o weights by 1 - p; behind "
                 "Gemma-3's q/k norms and its post-attention RMSNorm that scaling does not "
                 f"reach the logits (the check: {attn:.1e}), so the relaxation sees dropping an "
                 "attention as free while the size penalty rewards it, and the discretised "
                 "plans drop attentions the real model needs. The FFN is not scale-invariant "
                 f"in the same way (up and down x 0.5: {ffn:.2g})"
                 + (", and no FFN neuron block was pruned." if not blocks else "."))
    return [text]


def render(rows, args, command, started, wall, machine, split, table, scales) -> str:
    fp = rows[0]["ppl"]
    elements = table.elements
    ilp_loss = ("next-token cross-entropy per token (`lm_token_losses`, random signs)"
                if args.ilp_loss == "lm" else "the output-distillation surrogate")
    measured = table.info.get("prune_cost") == "measured"
    prune = (f"the pruned candidate priced by its measured loss increase on the first "
             f"{table.info['prune_batches']} windows plus {table.info['prune_margin']:g} "
             f"standard error(s) (`prune_cost=\"measured\"`, `prune_margin`)" if measured
             else "the pruned candidate priced by the Taylor estimate")
    dnas_bits = ", ".join(f"{b:g}" for b in args.dnas_budgets) or "none"
    noprune_bits = ", ".join(f"{b:g}" for b in args.dnas_noprune_budgets) or "none"
    return "\n".join([
        ("## Gemma-3-270M: mixed-precision plans vs uniform, wikitext-2 perplexity vs bytes "
         "(`benchmarks/gemma_mixed_precision.py`)"),
        "",
        (f"Searched weights: the 126 linears of the 18 decoder blocks as {len(table.subgroups)} "
         f"subgroups ({elements:,} weights; {4 * elements / 1e6:.1f} MB in fp32): q/k/v per "
         f"attention head (`PerHead()`; Gemma-3-270M has 4 q heads and 1 kv head, so pruning "
         f"is all-or-nothing per block: a pruned head takes the block's whole attention, k, v "
         f"and o with it, and o joins that tie), up/gate in blocks of {args.neurons} FFN "
         f"neurons (`PerNeurons({args.neurons})`, pruned together with down's columns), o and "
         f"down whole. The tied 262,144 x 640 embedding / LM head (167.8M weights, 63% of the "
         f"model) stays fp32 and is **not** in the bytes below (the per-word issue quantizes "
         f"it); norms stay fp32. Default `SearchSpace` ({{pruned, 2, 3, 4, 8}} x {{uniform "
         f"symmetric, BCQ}} + fp32, group 128, fp32 scales)."),
        "",
        (f"Text (as `gemma_bcq_ppl.py`): evaluation on tokens {split['eval'][0]}.."
         f"{split['eval'][1]} of `{DATA}` ({split['eval_windows']} windows of {args.ctx} with "
         f"[BOS], every token scored); search calibration on tokens {split['calib'][0]}.."
         f"{split['calib'][1]} ({split['calib_windows']} windows of {args.train_ctx}, "
         f"disjoint). `ilp` = one `sensitivity_table` (Fisher of {ilp_loss} over the "
         f"{split['calib_windows']} windows; {prune}) + `plan_for_budget` (HiGHS) per budget; "
         f"`ilp-mean` = the same table priced at the measured mean alone "
         f"(`table.priced(\"measured\", margin=0)`); `ilp-taylor` = the same table with the "
         f"pruned candidate priced by the Taylor estimate `0.5 sum F W^2` "
         f"(`table.priced(\"taylor\")`); `dnas` = "
         f"`search_precision_dnas` (output-distillation loss against the fp32 logits, "
         f"**reduced for a 2-core CPU**: {args.steps} Adam steps per lambda probe, "
         f"{args.probes} probes from lambda {args.lambda_start:g}, the first "
         f"{args.dnas_batches} calibration windows; budgets {dnas_bits}); `dnas-noprune` = the "
         f"same over the space without the pruned candidate (`SearchSpace(bits=(2, 3, 4, "
         f"8))`; budgets {noprune_bits}); uniform rows = "
         f"PrecisionPlans of the same subgroups with one format everywhere. Every plan is "
         f"applied with `lowbit.apply_precision` weight-only (int8 blocks dequantized in the "
         f"graph; pruned attentions and neuron blocks removed from the graph)."),
        "",
        ("| plan | formats (share of searched weights) | bytes | bits/weight | pruned q heads "
         "(attentions) | pruned neuron blocks | perplexity (Δ vs FP32) | search s | note |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
        _fmt(rows[0], fp),
        *[_fmt(r, fp) for r in sorted(rows[1:], key=lambda r: r.get("bytes", 0))],
        "",
        ("bytes = `plan.total_bytes` of the searched weights as `apply_precision` stores them "
         "(codes + fp32 scales / alphas; fp blocks at 4 bytes; pruned subgroups 0, down at the "
         "width its kept neuron blocks leave it, the up / gate of a down pruned whole 0: "
         "`lowbit.search.Link`; rows kept from runs before 2026-12-04 counted the freed "
         "columns as kept); bits/weight = 8 x bytes / searched weights; pruned q heads "
         "of 72 (4 per block; attentions = blocks whose attention is gone); neuron blocks of "
         f"{args.neurons} (of {18 * 2048 // args.neurons}); search = seconds of the search "
         "(ilp: the shared sensitivity table, the pruning measurement included, + the solve; "
         "ilp-taylor: the table without the measurement + the solve; dnas: the whole "
         "bisection, candidate stacks included); probes = the bisection's lambdas and the bits "
         "per weight each reached; predicted = the plan's summed sensitivities (estimated "
         "increase of the mean next-token loss), measured = its evaluation loss minus FP32's; "
         "pruned units: what the plan paid for its pruning, the sum of their single measured "
         "increases and the measured increase with all of them removed together (float, on the "
         "pruning-cost windows)."),
        "",
        *kept_lines(rows),
        "",
        *reading(rows),
        "",
        *pricing_verdict(rows),
        "",
        *pricing_lines(table, args.train_ctx - 1),
        "",
        *dnas_pruning(rows, scales),
        "",
        (f"![Pareto: MiniLM SST-2 accuracy and Gemma perplexity vs bytes](img/"
         f"{pathlib.Path(PLOT).name})"),
        "",
        (f"The plot (`{PLOT}`) is drawn from `benchmarks/results/minilm_mixed_precision.json` "
         f"and `benchmarks/results/gemma_mixed_precision.json` by `{PLOT_CMD}`."),
        "",
        *run_footer(command, started, wall, machine, args.threads),
        (f"- model: Gemma-3-270M Q4_K_M GGUF sha256 {GEMMA_SHA256[:16]}… (dequantized to "
         f"fp32); data: {DATA} sha256 {sha256(shared_data_dir() / DATA)[:16]}…"),
    ])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"gemma_mixed_precision: {e}")
