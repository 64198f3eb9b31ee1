#!/usr/bin/env python
"""Gemma-3-270M wikitext-2 perplexity with only the (tied) embedding / LM head quantized:
per-word mixed precision by token frequency (Chung et al. 2020) vs its baselines.

    python benchmarks/gemma_word_bits.py [--tokens 2048] [--ctx 512] [--bits 1.5,2,2.5,3,4]
        [--methods bcq,uniform] [--row-bits 2,3,4] [--tensor-bits 4,6,8] [--no-mid]
        [--no-blind] [--iters 15] [--threads 2] [--work /tmp/lb/word_bits]
        [--out docs/accuracy.md] [--plot PNG] [--quick]

1. Gemma-3-270M base (``lowbit.models.load_gemma``), run eagerly in fp32. Its 262144 x 640
   embedding is tied: ``model.embed_tokens.weight`` *is* ``lm_head.weight``, so a variant
   overwrites that one tensor with its dequantized table (input embedding and output head
   change together) and the FP table is put back afterwards.
2. Evaluation windows: those of ``benchmarks/gemma_ppl.py`` (the first
   ``ceil(tokens / (ctx - 1))`` chunks of ``wikitext2_test_raw.txt``, ``[BOS] + chunk``).
3. Token counts, from text disjoint from the evaluation tokens, through Gemma's tokenizer
   without special tokens: SST-2 train sentences, Python's ``pydoc_data.topics``, and the
   wikitext-2 test tokens *after* the evaluation windows. Saved as JSON in ``--work``.
4. Variants (every plan is saved as JSON in ``--work``):
   - FP (fp32 table; sizes counted at fp16);
   - ``word-<method> @ T``: ``plan_for_budget(counts, T, bits)`` for each target ``T`` of
     ``--bits`` (and, unless ``--no-mid``, the midpoint of every feasible interval), with
     the tier bits ``(4, 3, ..., lo)`` for the smallest ``lo`` that makes ``T`` feasible
     (unseen tokens must take the lowest tier); a target no tier set from bits 1..4 reaches
     is reported as infeasible with the reachable ranges; plus the paper's rule
     ``plan_by_rule(counts, b=4, r=2)``;
   - ``blind-<method>``: the same tier sizes and bits, tokens assigned at random
     (``frequency_blind``): what frequency itself buys;
   - ``row-uniform <b>``: per-row asymmetric uniform, every row ``b`` bits;
   - ``tensor-sym <b>``: one symmetric scale for the whole table (``quantize_weight`` with
     ``QuantSpec(b, PerTensor())``).
   Variants whose tables are identical (same method and bits for every token) are evaluated
   once and marked. Sizes: ``TieredEmbedding.nbytes()`` (packed planes, fp16 scales, int32
   remap); whole model = that + every other parameter at fp16.

Everything in the output comes from the run; ``--out`` replaces the section between
``<!-- gemma-word-bits:begin -->`` and ``<!-- gemma-word-bits:end -->``; ``--plot`` writes a
PNG (perplexity vs embedding MB; needs matplotlib: ``pip install lowbit[bench]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import pathlib
import re
import shlex
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_ppl import DATA, perplexity, windows
from sst2_probe import machine_info, replace_section, sha256

from lowbit.config import PerTensor, QuantSpec
from lowbit.data import read_sst2, shared_data_dir
from lowbit.errors import ConfigError
from lowbit.models import GEMMA_SHA256, load_gemma
from lowbit.quant import bcq
from lowbit.quant.numerics import dequantize, quantize_weight
from lowbit.quant.word_bits import (
    WordBitsPlan,
    feasible_range,
    frequency_blind,
    plan_by_rule,
    plan_for_budget,
    quantize_embedding,
    token_counts,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = "gemma-word-bits"
FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni")
SERIES = {"word-bcq": "per-word BCQ", "word-uniform": "per-word uniform",
          "blind-bcq": "frequency-blind BCQ", "blind-uniform": "frequency-blind uniform",
          "row-bcq": "per-row BCQ", "row-uniform": "per-row uniform",
          "tensor-sym": "per-tensor symmetric"}
FP_BYTES = 2        # sizes of float tensors are counted at fp16


def log(msg: str) -> None:
    print(msg, flush=True)


def cpu_flags() -> list[str]:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    have = set(text.split())
    return [f for f in FLAGS if f in have]


# ---- counts ----------------------------------------------------------------------------------

def count_tokens(tok, ids: torch.Tensor, eval_end: int, vocab: int) -> tuple[torch.Tensor, list]:
    """Counts from SST-2 train, pydoc topics and wikitext tokens ``eval_end..``; the sources."""
    from pydoc_data.topics import topics

    sst2, _ = read_sst2("train")
    pydoc = [topics[k] for k in sorted(topics)]
    parts = [("sst2_train.tsv (sentences)", token_counts(sst2, tok, vocab), len(sst2)),
             ("pydoc_data.topics (topic texts)", token_counts(pydoc, tok, vocab), len(pydoc)),
             (f"{DATA} tokens {eval_end}..{len(ids) - 1} (after the evaluation windows)",
              torch.bincount(ids[eval_end:], minlength=vocab), 1)]
    sources = [{"source": name, "texts": n, "tokens": int(c.sum()), "distinct": int((c > 0).sum())}
               for name, c, n in parts]
    return sum(c for _, c, _ in parts), sources


def save_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


# ---- tier sets -------------------------------------------------------------------------------

def ladder(lo: int) -> tuple[int, ...]:
    return tuple(range(bcq.MAX_BITS, lo - 1, -1))


def intervals(counts: torch.Tensor) -> list[tuple[tuple[int, ...], float, float]]:
    """For each lowest-tier width ``lo``: the ladder ``(4, ..., lo)`` and its feasible range.
    Any tier set from bits 1..4 whose lowest tier has ``lo`` bits reaches a sub-range of it,
    so their union is everything the budget mode can reach."""
    return [(ladder(lo), *feasible_range(counts, ladder(lo))) for lo in range(1, 5)]


def pick_bits(counts: torch.Tensor, target: float) -> tuple[tuple[int, ...] | None, str]:
    """The ladder with the smallest lowest tier that reaches ``target``, or None and why."""
    eps = 1e-9
    iv = intervals(counts)
    for bits, lo, hi in iv:
        if lo - eps <= target <= hi + eps:
            return bits, ""
    reach = " ∪ ".join(f"[{lo:g}, {hi:.4g}]" for _, lo, hi in iv)
    unseen = int((counts == 0).sum())
    return None, (f"no tier set from bits 1..4 reaches {target:g}: with {unseen} of "
                  f"{counts.numel()} tokens unseen (they take the lowest tier) the reachable "
                  f"averages are {reach}")


# ---- variants --------------------------------------------------------------------------------

@dataclasses.dataclass
class Variant:
    name: str
    series: str
    plan: WordBitsPlan | None = None       # None: FP or per-tensor
    tensor_bits: int | None = None
    target: float | None = None
    infeasible: str = ""


def plan_variants(counts, args) -> list[Variant]:
    out = [Variant("FP", "fp")]
    targets = list(args.bits)
    if args.mid:
        targets += [round((lo + hi) / 2, 4) for _, lo, hi in intervals(counts) if hi > lo]
    targets = sorted(set(targets))
    for method in args.methods:
        for t in targets:
            bits, why = pick_bits(counts, t)
            name = f"word-{method} @ {t:g}"
            if bits is None:
                out.append(Variant(name, f"word-{method}", target=t, infeasible=why))
                continue
            out.append(Variant(name, f"word-{method}", plan_for_budget(counts, t, bits,
                                                                       method=method), target=t))
        out.append(Variant(f"word-{method} rule b=4 r=2", f"word-{method}",
                           plan_by_rule(counts, 4, 2.0, method=method)))
        if args.blind:
            out += [Variant(f"blind-{method} ({v.name.split(' ', 1)[1]})", f"blind-{method}",
                            frequency_blind(v.plan, seed=0), target=v.target)
                    for v in list(out) if v.series == f"word-{method}" and v.plan is not None
                    and sum(n > 0 for n in v.plan.tier_sizes) > 1]
    v = counts.numel()
    out += [Variant(f"row-uniform {b}", "row-uniform",
                    WordBitsPlan((b,), torch.zeros(v, dtype=torch.int64), counts, "uniform"))
            for b in args.row_bits]
    out += [Variant(f"tensor-sym {b}", "tensor-sym", tensor_bits=b) for b in args.tensor_bits]
    return out


def table_key(plan: WordBitsPlan) -> tuple[str, str]:
    """Identical tables: same method and same bits for every token."""
    per_token = torch.tensor(plan.bits, dtype=torch.int8)[plan.tier]
    return plan.method, hashlib.sha256(per_token.numpy().tobytes()).hexdigest()


def build(v: Variant, w: torch.Tensor, iters: int) -> tuple[torch.Tensor, int]:
    """The dequantized float32 table and its size in bytes."""
    if v.series == "fp":
        return w, w.numel() * FP_BYTES
    if v.tensor_bits is not None:
        spec = QuantSpec(bits=v.tensor_bits, symmetric=True, granularity=PerTensor())
        q, scale, zp = quantize_weight(w, spec, "embed_tokens")
        return dequantize(q, scale, zp), math.ceil(w.numel() * v.tensor_bits / 8) + FP_BYTES
    emb = quantize_embedding(w, v.plan, iters=iters)
    return emb.dequantize(), emb.nbytes()["total"]


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    floats = lambda s: [float(x) for x in s.split(",") if x.strip()]
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]
    p.add_argument("--tokens", type=int, default=2048, help="scored tokens, at least")
    p.add_argument("--ctx", type=int, default=512, help="window length incl. BOS")
    p.add_argument("--bits", type=floats, default=[1.5, 2, 2.5, 3, 4],
                   help="per-word target average code bits")
    p.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m],
                   default=["bcq", "uniform"], help="per-word codes: bcq, uniform")
    p.add_argument("--row-bits", type=ints, default=[2, 3, 4])
    p.add_argument("--tensor-bits", type=ints, default=[4, 6, 8])
    p.add_argument("--no-mid", dest="mid", action="store_false",
                   help="do not add the midpoint of each feasible interval as a target")
    p.add_argument("--no-blind", dest="blind", action="store_false",
                   help="skip the frequency-blind controls")
    p.add_argument("--iters", type=int, default=bcq.DEFAULT_ITERS, help="BCQ refinement rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/lb/word_bits"),
                   help="where counts and plans are saved as JSON (outside the repo)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="markdown file whose gemma-word-bits section to write/replace")
    p.add_argument("--plot", type=pathlib.Path, default=None,
                   help="PNG path (default: docs/img/gemma_word_bits.png with --out, else "
                        "<work>/gemma_word_bits.png)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 window of 128, targets 2, 2 BCQ rounds, row-uniform 2, "
                        "tensor-sym 8, no midpoints")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.ctx, args.bits, args.iters = 127, 128, [2.0], 2
        args.row_bits, args.tensor_bits, args.mid = [2], [8], False
    bad = [m for m in args.methods if m not in ("bcq", "uniform")]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from bcq, uniform")
    if args.plot is None:
        args.plot = (REPO / "docs/img/gemma_word_bits.png" if args.out is not None
                     else args.work / "gemma_word_bits.png")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/gemma_word_bits.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    started, t_start = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    machine = machine_info()

    lm, tok = load_gemma()
    emb = lm.model.embed_tokens.weight
    if emb is not lm.lm_head.weight:
        raise SystemExit("expected Gemma's embedding and LM head to be one tied tensor")
    vocab, dim = emb.shape
    text_path = shared_data_dir() / DATA
    ids = tok(text_path.read_text(encoding="utf-8"), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    n = args.ctx - 1
    n_eval = math.ceil(args.tokens / n)
    eval_end = n_eval * n
    eval_wins = windows(ids[:eval_end], args.ctx, lm.config.bos_token_id)
    eval_targets = torch.cat([w[0, 1:] for w in eval_wins])
    log(f"{DATA}: {len(ids)} tokens; evaluation tokens 0..{eval_end - 1} ({len(eval_wins)} "
        f"windows x {args.ctx})")

    counts, sources = count_tokens(tok, ids, eval_end, vocab)
    unseen = int((counts == 0).sum())
    for s in sources:
        log(f"counts: {s['source']}: {s['tokens']} tokens, {s['distinct']} distinct")
    log(f"counts: {int(counts.sum())} tokens, {vocab - unseen} of {vocab} ids seen, "
        f"{unseen} unseen")
    save_json(args.work / "counts.json", {"vocab_size": vocab, "sources": sources,
                                          "counts": counts.tolist()})
    for bits, lo, hi in intervals(counts):
        log(f"feasible average bits with tiers {bits}: [{lo:g}, {hi:.4f}]")

    variants = plan_variants(counts, args)
    w_fp = emb.detach().clone()
    rest = sum(p.numel() for p in lm.parameters()) - emb.numel()
    model = lambda x: lm(input_ids=x, use_cache=False)
    rows, done = [], {}
    for v in variants:
        row = {"name": v.name, "series": v.series, "target": v.target}
        if v.infeasible:
            log(f"{v.name}: infeasible: {v.infeasible}")
            rows.append({**row, "infeasible": v.infeasible})
            continue
        if v.plan is not None:
            slug = re.sub(r"[^A-Za-z0-9.\-]+", "_", v.name.replace("@", "at")).strip("_")
            v.plan.save(args.work / f"plan_{slug}.json")
            per_token = torch.tensor(v.plan.bits, dtype=torch.float64)[v.plan.tier]
            row.update(bits=v.plan.bits, sizes=v.plan.tier_sizes, avg=v.plan.average_bits,
                       eval_bits=float(per_token[eval_targets].mean()))
            if v.series.startswith("word-") and sum(n > 0 for n in v.plan.tier_sizes) == 1:
                row["series"] = "row-" + v.plan.method      # one tier holds every row
                row["one_tier"] = True
        elif v.tensor_bits is not None:
            row.update(avg=float(v.tensor_bits), eval_bits=float(v.tensor_bits))
        key = table_key(v.plan) if v.plan is not None else (v.name,)
        if key in done:
            same = done[key]
            row.update({k: same[k] for k in ("ppl", "nll", "bytes", "rel_err", "t_quant",
                                             "t_eval")}, same_as=same["name"])
            log(f"{v.name}: same table as {same['name']}")
        else:
            log(f"{v.name}:" + (f" tiers {v.plan.bits}, sizes {v.plan.tier_sizes}, average "
                                f"{v.plan.average_bits:.4f} bits" if v.plan else ""))
            t = time.perf_counter()
            table, nbytes = build(v, w_fp, args.iters)
            row["t_quant"] = time.perf_counter() - t
            row["bytes"] = nbytes
            row["rel_err"] = float((table - w_fp).norm() / w_fp.norm())
            with torch.no_grad():
                emb.copy_(table)
            del table
            row.update(perplexity(model, eval_wins, v.name))
            with torch.no_grad():
                emb.copy_(w_fp)
            done[key] = row
        row["model_bytes"] = row["bytes"] + rest * FP_BYTES
        rows.append(row)
        log(f"  -> ppl {row['ppl']:.3f}, embedding {row['bytes'] / 1e6:.1f} MB, "
            f"rel. error {row['rel_err']:.4f}; quantize {row['t_quant']:.0f} s, eval "
            f"{row['t_eval']:.0f} s")

    save_json(args.work / "results.json", rows)
    wall = time.perf_counter() - t_start
    plot_path = plot(rows, args.plot)
    section = render(rows, args, command, started, wall, machine, text_path, sources, unseen,
                     vocab, dim, rest, len(ids), eval_end, len(eval_wins), counts, plot_path)
    log("\n" + section)
    if args.out is not None:
        replace_section(args.out, section, MARKER)
        log(f"\nwrote the {MARKER} section of {args.out}")
    return 0


# ---- output ----------------------------------------------------------------------------------

def plot(rows: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed (pip install lowbit[bench]): no plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = dict(zip(SERIES, "osdvPx^"))
    fp = next((r for r in rows if r["series"] == "fp"), None)
    if fp is not None:
        ax.axhline(fp["ppl"], color="gray", linestyle="--", linewidth=1,
                   label=f"FP ({fp['ppl']:.2f}; {fp['bytes'] / 1e6:.0f} MB at fp16)")
    for series, label in SERIES.items():
        pts = sorted({(r["bytes"] / 1e6, r["ppl"]) for r in rows
                      if r["series"] == series and "ppl" in r})
        if pts:
            ax.plot(*zip(*pts), marker=markers[series], linestyle="-" if len(pts) > 1 else "",
                    label=label)
    ax.set_xlabel("embedding / LM head size, MB, log scale (packed codes + fp16 scales + remap)")
    ax.set_ylabel("wikitext-2 perplexity (log scale)")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([20, 30, 50, 70, 100, 150, 200])
    ax.set_title("Gemma-3-270M, only the tied embedding quantized")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")
    return path


def _fmt_row(r: dict, fp: float) -> str:
    if "infeasible" in r:
        return (f"| {r['name']} | - | - | - | - | - | - | - | - | - | infeasible: "
                f"{r['infeasible']} |")
    tiers = (f"{'/'.join(map(str, r['bits']))} : {'/'.join(map(str, r['sizes']))}"
             if "bits" in r else "-")
    avg = f"{r['avg']:.3f}" if "avg" in r else "16 (fp)"
    ev = f"{r['eval_bits']:.2f}" if "eval_bits" in r else "-"
    note = (f"same table as {r['same_as']}" if "same_as" in r else
            "one tier holds every row: a per-row table" if r.get("one_tier") else "")
    ratio = r["ppl"] / fp
    delta = f"{100 * (ratio - 1):+.1f}%" if ratio < 2 else f"×{ratio:.3g}"
    times = "-" if "same_as" in r else f"{r['t_quant']:.0f} / {r['t_eval']:.0f}"
    return (f"| {r['name']} | {tiers} | {avg} | {ev} | {r['bytes'] / 1e6:.1f} "
            f"| {r['model_bytes'] / 1e6:.1f} | {r['rel_err']:.4f} | {r['ppl']:.3f} "
            f"| {delta} | {times} | {note} |")


def reading(rows: list[dict]) -> list[str]:
    """Generated comparisons: frequency-aware vs frequency-blind at the same tiers, and each
    per-word plan vs per-row uniform of no smaller size."""
    by = {r["name"]: r for r in rows if "ppl" in r}
    out = []
    for r in rows:
        if r["series"].startswith("blind-") and "ppl" in r:
            aware = by.get(r["series"].replace("blind-", "word-") + " " + r["name"].split(" (")[1]
                           .rstrip(")"))
            if aware:
                out.append(f"- {aware['name']} (tiers by frequency): perplexity "
                           f"{aware['ppl']:.3f}; the same tiers assigned at random: "
                           f"{r['ppl']:.3f}.")
    rowu = [r for r in rows if r["series"] == "row-uniform" and "ppl" in r]
    for r in rows:
        if r["series"].startswith("word-") and "ppl" in r:
            bigger = [u for u in rowu if u["bytes"] >= r["bytes"]]
            if bigger:
                u = min(bigger, key=lambda u: u["bytes"])
                out.append(f"- {r['name']}: {r['bytes'] / 1e6:.1f} MB, perplexity "
                           f"{r['ppl']:.3f}; smallest per-row uniform table at least as large: "
                           f"{u['name']} ({u['bytes'] / 1e6:.1f} MB, {u['ppl']:.3f}).")
    return out


def render(rows, args, command, started, wall, machine, text_path, sources, unseen, vocab, dim,
           rest, n_ids, eval_end, n_wins, counts, plot_path) -> str:
    fp = next(r["ppl"] for r in rows if r["series"] == "fp")
    src = "; ".join(f"{s['source']}: {s['tokens']:,} tokens ({s['distinct']:,} distinct ids)"
                    for s in sources)
    reach = ", ".join(f"tiers {'/'.join(map(str, b))}: [{lo:g}, {hi:.4f}]"
                      for b, lo, hi in intervals(counts))
    parts = [
        "## Gemma-3-270M: per-word mixed-precision embedding (`benchmarks/gemma_word_bits.py`)",
        "",
        (f"Only the tied embedding / LM head ({vocab:,} x {dim}: "
         f"{100 * vocab * dim / (vocab * dim + rest):.0f}% of the parameters) is quantized; "
         f"everything else stays fp32 in the evaluation (counted at fp16 in the model size). "
         f"Evaluation: tokens 0..{eval_end - 1} of `{DATA}` ({n_wins} windows of {args.ctx}, "
         f"`[BOS] + chunk`, every token scored; eager model, not the captured graph)."),
        "",
        (f"Token counts (Gemma's tokenizer, no special tokens), disjoint from the evaluation "
         f"tokens: {src}. In all {int(counts.sum()):,} tokens; {vocab - unseen:,} of "
         f"{vocab:,} ids seen, **{unseen:,} unseen** ({100 * unseen / vocab:.1f}%), and unseen "
         f"ids take the lowest tier. So the averages the budget mode can reach are: {reach}. "
         f"Each target uses the tiers 4/3/.../lo with the smallest lo that reaches it."),
        "",
        ("| variant | tier bits : rows | avg code bits | eval tokens' mean bits | embedding MB "
         "| model MB | rel. error | perplexity | Δ vs FP | quantize / eval s | note |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[_fmt_row(r, fp) for r in rows],
        "",
        ("Columns: avg code bits = plane bits per element (scales and remap excluded); eval "
         "tokens' mean bits = mean bit width of the rows of the scored tokens; embedding MB = "
         "packed planes (8 per byte) + fp16 alphas (BCQ: one per plane and row; uniform: one "
         "scale and one offset per row) + int32 remap per token when more than one tier holds "
         "rows (FP: fp16); model MB = embedding + the other "
         f"{rest:,} parameters at fp16; rel. error = ‖W − W'‖_F / ‖W‖_F of the table; Δ vs FP "
         "as a percentage below 2x FP's perplexity, as a factor above; seconds on 2 shared "
         "cores, progress information, not performance. "
         "Counts and every plan are saved as JSON in "
         f"`{args.work}` by the run."),
    ]
    if plot_path is not None:
        rel = os.path.relpath(plot_path.resolve(),
                              (args.out or REPO / "docs/accuracy.md").resolve().parent)
        parts += ["", f"![perplexity vs embedding size]({rel})"]
    if lines := reading(rows):
        parts += ["", "From this run:", *lines]
    parts += [
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s ({wall / 60:.1f} min)",
        (f"- machine: {machine['nproc']} cpu(s), {machine['cpu']}; flags "
         f"`{' '.join(cpu_flags())}`; {args.threads} thread(s)"),
        (f"- software: torch {machine['torch']}, transformers {machine['transformers']}, "
         f"Python {machine['python']}, lowbit {machine['lowbit']}; BCQ {args.iters} rounds"),
        (f"- model: gemma-3-270m-q4_k_m.gguf sha256 {GEMMA_SHA256[:16]}…; data: {DATA} sha256 "
         f"{sha256(text_path)[:16]}…, {n_ids} tokens"),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"gemma_word_bits: {e}")
