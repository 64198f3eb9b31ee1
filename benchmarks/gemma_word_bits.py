#!/usr/bin/env python
"""Gemma-3-270M wikitext-2 perplexity with only the (tied) embedding / LM head quantized:
per-word mixed precision by token frequency (Chung et al. 2020) vs its baselines.

    python benchmarks/gemma_word_bits.py [--tokens 2048] [--ctx 512] [--bits 1.5,2,2.5,3,4]
        [--budget code|storage] [--methods bcq,uniform] [--group 64] [--unseen rank]
        [--lo auto] [--mid] [--no-blind] [--head tied,head8] [--head8-bits BITS]
        [--row-bits 2,3,4] [--tensor-bits 4,6,8] [--iters 15] [--threads 2]
        [--work /tmp/lb/word_bits] [--out docs/accuracy.md] [--plot PNG] [--quick]

1. Gemma-3-270M base (``lowbit.models.load_gemma``), run eagerly in fp32. Its 262144 x 640
   embedding is tied: ``model.embed_tokens.weight`` *is* ``lm_head.weight``, so a variant
   overwrites that one tensor with its dequantized table (input embedding and output head
   change together) and the FP table is put back afterwards.
2. Evaluation windows: those of ``benchmarks/gemma_ppl.py`` (the first
   ``ceil(tokens / (ctx - 1))`` chunks of ``wikitext2_test_raw.txt``, ``[BOS] + chunk``).
3. Token counts, from text disjoint from the evaluation tokens, through Gemma's tokenizer
   without special tokens: SST-2 train sentences, Python's ``pydoc_data.topics``, and the
   wikitext-2 test tokens *after* the evaluation windows. Saved as JSON in ``--work``. The run
   also measures whether token ids carry frequency information (what ``unseen="rank"`` relies
   on): per id decile, the share of ids seen, and, of the ids unseen in SST-2 + pydoc, the
   share that does occur in the held-out wikitext tokens.
4. Variants (every plan is saved as JSON in ``--work``), for every ``--group`` (columns per
   alpha set; ``none``: one per row):
   - FP (fp32 table; sizes counted at fp16);
   - ``word-<method> g<group> <unseen> @ T``: ``plan_for_budget(counts, c, bits, method,
     group, unseen)`` for each target ``T`` of ``--bits`` and each ``--unseen`` rule. With
     ``--budget code`` (default) ``c = T`` average code bits; with ``--budget storage`` ``T``
     is bits per element *including* the fp16 scales and ``c`` is solved for it (BCQ:
     ``c (1 + 16 / g) = T``, ``c`` alphas of 16 bits per ``g`` columns; uniform:
     ``c + 32 / g = T``, a scale and an offset per group), so groups compare at equal bytes.
     Tier bits ``(4, 3, ..., lo)``: with ``--lo auto``, the smallest ``lo`` that reaches the
     target (``unseen=lowest``: unseen tokens must take the lowest tier; a target no tier set
     reaches is reported as infeasible with the reachable ranges) and ``lo = ceil(c) - 1``
     (at least 1; ``c`` mixes tiers around it) for ``unseen=rank``, where every target is
     reachable. ``--mid`` adds the midpoint of every interval that ``unseen=lowest`` reaches.
     Plus the paper's rule ``plan_by_rule(counts, b=4, r=2)``;
   - ``blind-...``: the same tier sizes and bits, tokens assigned at random
     (``frequency_blind``): what frequency itself buys;
   - ``row-uniform g<group> <b>``: asymmetric uniform, every row ``b`` bits;
   - ``tensor-sym <b>``: one symmetric scale for the whole table (``quantize_weight`` with
     ``QuantSpec(b, PerTensor())``).
   With ``--head`` holding ``head8``, FP and the per-word plans at ``--head8-bits`` are
   evaluated a second time untied: the embedding lookup reads the per-word table, the LM head its own
   per-row symmetric 8-bit copy of the FP table (``model.lm_head.weight =
   nn.Parameter(head_table)``; its bytes, int8 codes + one fp16 scale per row, are added).
   Variants whose tables are identical (same method, group and bits for every token) are
   evaluated once and marked. Sizes: ``TieredEmbedding.nbytes()`` (packed planes, fp16
   scales, int32 remap); whole model = that (+ a separate head) + every other parameter at
   fp16.

Everything in the output comes from the run; ``--out`` replaces the section between
``<!-- gemma-word-bits:begin -->`` and ``<!-- gemma-word-bits:end -->``; ``--plot`` writes a
PNG (perplexity vs embedding MB; needs matplotlib: ``pip install lowbit[bench]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_ppl import DATA, perplexity, windows
from sst2_probe import (
    cpu_flags,  # noqa: F401  (gemma_mixed_precision_tvm imports it from here)
    replace_section,
    run_footer,
    sha256,
    start_run,
)

from lowbit.config import PerChannel, PerTensor, QuantSpec
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
FP_BYTES = 2        # sizes of float tensors are counted at fp16
SCALE_BITS = 16     # fp16 alphas / scales / offsets
GOALS = ((2.5, 1.5), (3.0, 0.3))   # the issue: at <= X average code bits, within +Y% of FP


def log(msg: str) -> None:
    print(msg, flush=True)


def gtag(group: int | None) -> str:
    return "gD" if group is None else f"g{group}"


# ---- counts ----------------------------------------------------------------------------------

def count_tokens(tok, ids: torch.Tensor, eval_end: int, vocab: int
                 ) -> tuple[torch.Tensor, list, list[torch.Tensor]]:
    """Counts from SST-2 train, pydoc topics and wikitext tokens ``eval_end..``; the sources;
    the counts of each source."""
    from pydoc_data.topics import topics

    sst2, _ = read_sst2("train")
    pydoc = [topics[k] for k in sorted(topics)]
    parts = [("sst2_train.tsv (sentences)", token_counts(sst2, tok, vocab), len(sst2)),
             ("pydoc_data.topics (topic texts)", token_counts(pydoc, tok, vocab), len(pydoc)),
             (f"{DATA} tokens {eval_end}..{len(ids) - 1} (after the evaluation windows)",
              torch.bincount(ids[eval_end:], minlength=vocab), 1)]
    sources = [{"source": name, "texts": n, "tokens": int(c.sum()), "distinct": int((c > 0).sum())}
               for name, c, n in parts]
    return sum(c for _, c, _ in parts), sources, [c for _, c, _ in parts]


def id_deciles(parts: list[torch.Tensor]) -> list[dict]:
    """Does the token id carry frequency information? Per decile of the id range: the share
    of ids seen in all the counting text; of the ids unseen in SST-2 + pydoc (the first two
    sources), the share that occurs in the held-out wikitext tokens (the third)."""
    total, a, held = sum(parts), parts[0] + parts[1], parts[2]
    v, out = total.numel(), []
    for k in range(10):
        lo, hi = k * v // 10, (k + 1) * v // 10
        un = a[lo:hi] == 0
        out.append({"ids": f"{lo}..{hi - 1}", "seen": float((total[lo:hi] > 0).double().mean()),
                    "unseen_a": int(un.sum()),
                    "held_out_seen": float((held[lo:hi][un] > 0).double().mean())
                    if un.any() else 0.0})
    return out


def save_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


# ---- tier sets -------------------------------------------------------------------------------

def ladder(lo: int) -> tuple[int, ...]:
    return tuple(range(bcq.MAX_BITS, lo - 1, -1))


def intervals(counts: torch.Tensor, unseen: str = "lowest"
              ) -> list[tuple[tuple[int, ...], float, float]]:
    """For each lowest-tier width ``lo``: the ladder ``(4, ..., lo)`` and its feasible range.
    Any tier set from bits 1..4 whose lowest tier has ``lo`` bits reaches a sub-range of it,
    so their union is everything the budget mode can reach."""
    return [(ladder(lo), *feasible_range(counts, ladder(lo), unseen=unseen)) for lo in range(1, 5)]


def pick_bits(counts: torch.Tensor, target: float, unseen: str, lo_opt: str
              ) -> tuple[tuple[int, ...] | None, str]:
    """The ladder for ``target`` (module docstring, ``--lo``), or None and why."""
    eps = 1e-9
    iv = intervals(counts, unseen)
    if lo_opt != "auto":
        cands = [iv[int(lo_opt) - 1]]
    elif unseen == "rank":
        cands = [iv[max(1, math.ceil(target - eps) - 1) - 1]]
    else:
        cands = iv
    for bits, lo, hi in cands:
        if lo - eps <= target <= hi + eps:
            return bits, ""
    reach = " ∪ ".join(f"[{lo:g}, {hi:.4g}]" for _, lo, hi in cands)
    n_unseen = int((counts == 0).sum())
    return None, (f"the tier sets tried reach only {reach} (unseen={unseen}; {n_unseen} of "
                  f"{counts.numel()} tokens unseen)")


def code_target(target: float, method: str, group: int | None, dim: int, budget: str) -> float:
    """Average code bits for a target in ``budget`` units (module docstring)."""
    if budget == "code":
        return target
    g = dim if group is None else group
    return target / (1 + SCALE_BITS / g) if method == "bcq" else target - 2 * SCALE_BITS / g


# ---- variants --------------------------------------------------------------------------------

@dataclasses.dataclass
class Variant:
    name: str
    series: str
    plan: WordBitsPlan | None = None       # None: FP or per-tensor
    tensor_bits: int | None = None
    target: float | None = None
    infeasible: str = ""
    heads: tuple[str, ...] = ("tied",)


def plan_variants(counts, dim: int, args) -> list[Variant]:
    out = [Variant("FP", "fp", heads=("tied", "head8") if "head8" in args.head else ("tied",))]
    for group in args.group:
        g = gtag(group)
        for method in args.methods:
            for unseen in args.unseen:
                series = f"word-{method} {g} {unseen}"
                targets = list(args.bits)
                if args.mid:
                    targets += [round((lo + hi) / 2, 4) for _, lo, hi in intervals(counts)
                                if hi > lo]
                for t in sorted(set(targets)):
                    c = code_target(t, method, group, dim, args.budget)
                    name = f"{series} @ {t:g}" + (" (storage)" if args.budget == "storage"
                                                  else "")
                    bits, why = pick_bits(counts, c, unseen, args.lo)
                    if bits is None:
                        out.append(Variant(name, series, target=t, infeasible=why))
                        continue
                    heads = ("tied", "head8") if "head8" in args.head and any(
                        abs(t - h) < 1e-9 for h in args.head8_bits) else ("tied",)
                    if "tied" not in args.head:
                        heads = tuple(h for h in heads if h != "tied")
                    if heads:
                        out.append(Variant(name, series, plan_for_budget(
                            counts, c, bits, method=method, group=group, unseen=unseen),
                            target=t, heads=heads))
                if args.rule and "tied" in args.head:
                    out.append(Variant(f"{series} rule b=4 r=2", series, plan_by_rule(
                        counts, 4, 2.0, method=method, group=group, unseen=unseen)))
            if args.blind and "tied" in args.head:
                words = [v for v in out if v.series.startswith(f"word-{method} {g} ")
                         and v.plan is not None and sum(n > 0 for n in v.plan.tier_sizes) > 1]
                out += [Variant(v.name.replace("word-", "blind-", 1), v.series.replace(
                    "word-", "blind-", 1), frequency_blind(v.plan, seed=0), target=v.target)
                    for v in words]
        v = counts.numel()
        out += [Variant(f"row-uniform {g} {b}", f"row-uniform {g}", WordBitsPlan(
            (b,), torch.zeros(v, dtype=torch.int64), counts, "uniform", group=group))
            for b in args.row_bits]
    out += [Variant(f"tensor-sym {b}", "tensor-sym", tensor_bits=b) for b in args.tensor_bits]
    return out


def table_key(plan: WordBitsPlan) -> tuple:
    """Identical tables: same method, group and bits for every token."""
    per_token = torch.tensor(plan.bits, dtype=torch.int8)[plan.tier]
    return plan.method, plan.group, hashlib.sha256(per_token.numpy().tobytes()).hexdigest()


def build(v: Variant, w: torch.Tensor, iters: int) -> tuple[torch.Tensor, int, float]:
    """The dequantized float32 table, its size in bytes, bits per element incl. scales."""
    if v.series == "fp":
        return w, w.numel() * FP_BYTES, 8.0 * FP_BYTES
    if v.tensor_bits is not None:
        spec = QuantSpec(bits=v.tensor_bits, symmetric=True, granularity=PerTensor())
        q, scale, zp = quantize_weight(w, spec, "embed_tokens")
        nbytes = math.ceil(w.numel() * v.tensor_bits / 8) + FP_BYTES
        return dequantize(q, scale, zp), nbytes, 8 * nbytes / w.numel()
    emb = quantize_embedding(w, v.plan, iters=iters)
    return emb.dequantize(), emb.nbytes()["total"], emb.bits_per_element()["scales"]


def head8_table(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-row symmetric int8 copy of the FP table and its bytes (codes + fp16 row scales)."""
    spec = QuantSpec(bits=8, symmetric=True, granularity=PerChannel(0))
    q, scale, zp = quantize_weight(w, spec, "lm_head")
    return dequantize(q, scale, zp), w.numel() + w.shape[0] * FP_BYTES


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    floats = lambda s: [float(x) for x in s.split(",") if x.strip()]
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]
    words = lambda s: [m.strip() for m in s.split(",") if m.strip()]
    groups = lambda s: [None if x == "none" else int(x) for x in words(s)]
    p.add_argument("--tokens", type=int, default=2048, help="scored tokens, at least")
    p.add_argument("--ctx", type=int, default=512, help="window length incl. BOS")
    p.add_argument("--bits", type=floats, default=[1.5, 2, 2.5, 3, 4],
                   help="per-word targets (average code bits, or see --budget)")
    p.add_argument("--budget", choices=("code", "storage"), default="code",
                   help="--bits as average code bits, or as bits per element incl. fp16 scales")
    p.add_argument("--methods", type=words, default=["bcq", "uniform"],
                   help="per-word codes: bcq, uniform")
    p.add_argument("--group", type=groups, default=[64],
                   help="columns per alpha set, a list; none = one set per row")
    p.add_argument("--unseen", type=words, default=["rank"], help="lowest, rank (a list)")
    p.add_argument("--lo", default="auto", choices=("auto", "1", "2", "3", "4"),
                   help="bits of the lowest tier (auto: see the module docstring)")
    p.add_argument("--mid", action="store_true",
                   help="add the midpoint of each interval unseen=lowest reaches as a target")
    p.add_argument("--no-rule", dest="rule", action="store_false",
                   help="skip the paper's rule b=4 r=2")
    p.add_argument("--no-blind", dest="blind", action="store_false",
                   help="skip the frequency-blind controls")
    p.add_argument("--head", type=words, default=["tied", "head8"],
                   help="tied (the head reads the quantized table), head8 (own int8 head)")
    p.add_argument("--head8-bits", type=floats, default=None,
                   help="targets evaluated with the head8 variant too (default: all of --bits)")
    p.add_argument("--row-bits", type=ints, default=[2, 3, 4])
    p.add_argument("--tensor-bits", type=ints, default=[4, 6, 8])
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
                   help="smoke test: 1 window of 128, target 2.5, 2 BCQ rounds, row-uniform 2, "
                        "tensor-sym 8")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.ctx, args.bits, args.iters = 127, 128, [2.5], 2
        args.row_bits, args.tensor_bits = [2], [8]
    if args.head8_bits is None:
        args.head8_bits = list(args.bits)
    for opt, got, ok in (("--methods", args.methods, ("bcq", "uniform")),
                         ("--unseen", args.unseen, ("lowest", "rank")),
                         ("--head", args.head, ("tied", "head8"))):
        if not got or any(m not in ok for m in got):
            p.error(f"{opt}: got {got}; choose from {', '.join(ok)}")
    if args.plot is None:
        args.plot = (REPO / "docs/img/gemma_word_bits.png" if args.out is not None
                     else args.work / "gemma_word_bits.png")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command, started, t_start, machine = start_run("gemma_word_bits.py", argv, args.threads)

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

    counts, sources, parts = count_tokens(tok, ids, eval_end, vocab)
    unseen = int((counts == 0).sum())
    for s in sources:
        log(f"counts: {s['source']}: {s['tokens']} tokens, {s['distinct']} distinct")
    log(f"counts: {int(counts.sum())} tokens, {vocab - unseen} of {vocab} ids seen, "
        f"{unseen} unseen; evaluation targets on unseen ids: "
        f"{int((counts[eval_targets] == 0).sum())} of {eval_targets.numel()}")
    deciles = id_deciles(parts)
    for d in deciles:
        log(f"ids {d['ids']}: {100 * d['seen']:.1f}% seen; of the {d['unseen_a']} unseen in "
            f"SST-2 + pydoc, {100 * d['held_out_seen']:.2f}% occur in the held-out wikitext")
    save_json(args.work / "counts.json", {"vocab_size": vocab, "sources": sources,
                                          "counts": counts.tolist(), "id_deciles": deciles})
    for mode in args.unseen:
        for bits, lo, hi in intervals(counts, mode):
            log(f"feasible average bits with tiers {bits}, unseen={mode}: [{lo:g}, {hi:.4f}]")

    variants = plan_variants(counts, dim, args)
    w_fp = emb.detach().clone()
    rest = sum(p.numel() for p in lm.parameters()) - emb.numel()
    model = lambda x: lm(input_ids=x, use_cache=False)
    head8 = None
    rows, done = [], {}
    for v in variants:
        base = {"name": v.name, "series": v.series, "target": v.target, "head": "tied"}
        if v.infeasible:
            log(f"{v.name}: infeasible: {v.infeasible}")
            rows.append({**base, "infeasible": v.infeasible})
            continue
        if v.plan is not None:
            slug = re.sub(r"[^A-Za-z0-9.\-]+", "_", v.name.replace("@", "at")).strip("_")
            v.plan.save(args.work / f"plan_{slug}.json")
            per_token = torch.tensor(v.plan.bits, dtype=torch.float64)[v.plan.tier]
            base.update(bits=v.plan.bits, sizes=v.plan.tier_sizes, avg=v.plan.average_bits,
                        eval_bits=float(per_token[eval_targets].mean()), group=v.plan.group)
            if v.series.startswith("word-") and sum(n > 0 for n in v.plan.tier_sizes) == 1:
                base["one_tier"] = True
        elif v.tensor_bits is not None:
            base.update(avg=float(v.tensor_bits), eval_bits=float(v.tensor_bits))
        key = table_key(v.plan) if v.plan is not None else (v.name,)
        table = None
        for head in v.heads:
            row = {**base, "head": head}
            if head == "head8":
                row.update(name=f"{v.name}, head8", series=v.series + " head8")
            if (key, head) in done:
                same = done[key, head]
                row.update({k: same[k] for k in ("ppl", "nll", "bytes", "head_bytes", "bpe",
                                                 "rel_err", "t_quant", "t_eval")},
                           same_as=same["name"])
                log(f"{row['name']}: same table as {same['name']}")
            else:
                if table is None:
                    log(f"{v.name}:" + (f" tiers {v.plan.bits}, sizes {v.plan.tier_sizes}, "
                                        f"average {v.plan.average_bits:.4f} bits"
                                        if v.plan else ""))
                    t = time.perf_counter()
                    table, nbytes, bpe = build(v, w_fp, args.iters)
                    t_quant = time.perf_counter() - t
                    rel_err = float((table - w_fp).norm() / w_fp.norm())
                row.update(t_quant=t_quant, bytes=nbytes, bpe=bpe, rel_err=rel_err,
                           head_bytes=0)
                with torch.no_grad():
                    emb.copy_(table)
                if head == "head8":
                    if head8 is None:
                        head8 = head8_table(w_fp)
                    lm.lm_head.weight = torch.nn.Parameter(head8[0], requires_grad=False)
                    row["head_bytes"] = head8[1]
                try:
                    row.update(perplexity(model, eval_wins, row["name"]))
                finally:
                    lm.lm_head.weight = emb                       # tied again
                    with torch.no_grad():
                        emb.copy_(w_fp)
                done[key, head] = row
            row["model_bytes"] = row["bytes"] + row["head_bytes"] + rest * FP_BYTES
            rows.append(row)
            log(f"  -> ppl {row['ppl']:.3f}, embedding {row['bytes'] / 1e6:.1f} MB"
                + (f" + head {row['head_bytes'] / 1e6:.1f} MB" if row["head_bytes"] else "")
                + f", {row['bpe']:.3f} bits/element incl. scales, rel. error "
                f"{row['rel_err']:.4f}; quantize {row['t_quant']:.0f} s, eval "
                f"{row['t_eval']:.0f} s")
        del table

    save_json(args.work / "results.json", rows)
    wall = time.perf_counter() - t_start
    plot_path = plot(rows, args.plot)
    section = render(rows, args, command, started, wall, machine, text_path, sources, unseen,
                     vocab, dim, rest, len(ids), eval_end, len(eval_wins), counts, plot_path,
                     deciles, int((counts[eval_targets] == 0).sum()), eval_targets.numel())
    log("\n" + section)
    if args.out is not None:
        replace_section(args.out, section, MARKER)
        log(f"\nwrote the {MARKER} section of {args.out}")
    return 0


# ---- output ----------------------------------------------------------------------------------

def plot(rows: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    """Perplexity vs stored MB: every series on a log scale (left), and a zoom on the range
    that matters, up to twice FP's perplexity, without the frequency-blind controls (right)."""
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed (pip install lowbit[bench]): no plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    fp = next((r for r in rows if r["series"] == "fp"), None)
    series = list(dict.fromkeys(r["series"] for r in rows if r["series"] != "fp"))
    markers = "osdvPx^<>*hH"
    for k, ax in enumerate(axes):
        zoom = k == 1
        if fp is not None:
            ax.axhline(fp["ppl"], color="gray", linestyle="--", linewidth=1,
                       label=f"FP ({fp['ppl']:.2f}; {fp['bytes'] / 1e6:.0f} MB at fp16)")
            ax.axhline(fp["ppl"] * 1.015, color="gray", linestyle=":", linewidth=1,
                       label="FP + 1.5% (the issue's goal at <= 2.5 bits)")
        for i, s in enumerate(series):
            if zoom and s.startswith("blind-"):
                continue
            pts = sorted({((r["bytes"] + r["head_bytes"]) / 1e6, r["ppl"]) for r in rows
                          if r["series"] == s and "ppl" in r})
            if pts:
                ax.plot(*zip(*pts), marker=markers[i % len(markers)], color=f"C{i % 10}",
                        linestyle="-" if len(pts) > 1 else "", label=s)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([20, 30, 50, 70, 100, 150, 200, 300])
        ax.set_xlabel("embedding (+ separate LM head) MB, log scale")
        ax.grid(True, which="both", alpha=0.3)
        if zoom and fp is not None:
            ax.set_ylim(fp["ppl"] * 0.97, fp["ppl"] * 2)
            ax.set_ylabel("wikitext-2 perplexity")
            ax.set_title("zoom: up to 2x FP, without the random controls")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("wikitext-2 perplexity (log scale)")
            ax.set_title("Gemma-3-270M, only the tied embedding / LM head quantized")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log(f"wrote {path}")
    return path


def _delta(ppl: float, fp: float) -> str:
    ratio = ppl / fp
    return f"{100 * (ratio - 1):+.1f}%" if ratio < 2 else f"×{ratio:.3g}"


def _fmt_row(r: dict, fp: float) -> str:
    if "infeasible" in r:
        return (f"| {r['name']} | {r['head']} | - | - | - | - | - | - | - | - | - | - "
                f"| infeasible: {r['infeasible']} |")
    tiers = (f"{'/'.join(map(str, r['bits']))} : {'/'.join(map(str, r['sizes']))}"
             if "bits" in r else "-")
    avg = f"{r['avg']:.3f}" if "avg" in r else "16 (fp)"
    ev = f"{r['eval_bits']:.2f}" if "eval_bits" in r else "-"
    note = (f"same table as {r['same_as']}" if "same_as" in r else
            "one tier holds every row: a per-row table" if r.get("one_tier") else "")
    mb = f"{r['bytes'] / 1e6:.1f}" + (f" + {r['head_bytes'] / 1e6:.1f}" if r["head_bytes"]
                                       else "")
    times = "-" if "same_as" in r else f"{r['t_quant']:.0f} / {r['t_eval']:.0f}"
    return (f"| {r['name']} | {r['head']} | {tiers} | {avg} | {r['bpe']:.3f} | {ev} | {mb} "
            f"| {r['model_bytes'] / 1e6:.1f} | {r['rel_err']:.4f} | {r['ppl']:.3f} "
            f"| {_delta(r['ppl'], fp)} | {times} | {note} |")


def reading(rows: list[dict]) -> list[str]:
    """Generated comparisons: frequency-aware vs frequency-blind at the same tiers, each
    per-word plan vs per-row uniform of no smaller size, head8 vs tied."""
    by = {r["name"]: r for r in rows if "ppl" in r}
    out = []
    for r in rows:
        if r["series"].startswith("blind-") and "ppl" in r:
            aware = by.get(r["name"].replace("blind-", "word-", 1))
            if aware:
                out.append(f"- {aware['name']} (tiers by frequency): perplexity "
                           f"{aware['ppl']:.3f}; the same tiers assigned at random: "
                           f"{r['ppl']:.3f}.")
    rowu = [r for r in rows if r["series"].startswith("row-uniform") and "ppl" in r]
    for r in rows:
        if r["series"].startswith("word-") and "ppl" in r and r["head"] == "tied" \
                and not r.get("one_tier"):
            bigger = [u for u in rowu if u["bytes"] >= r["bytes"]]
            if bigger:
                u = min(bigger, key=lambda u: u["bytes"])
                out.append(f"- {r['name']}: {r['bytes'] / 1e6:.1f} MB, perplexity "
                           f"{r['ppl']:.3f}; smallest per-row uniform table at least as large: "
                           f"{u['name']} ({u['bytes'] / 1e6:.1f} MB, {u['ppl']:.3f}).")
    for r in rows:
        if r["head"] == "head8" and "ppl" in r:
            tied = by.get(r["name"].removesuffix(", head8"))
            if tied:
                out.append(f"- {tied['name']}: tied head {tied['ppl']:.3f}; the same embedding "
                           f"with its own int8 head (+{r['head_bytes'] / 1e6:.1f} MB): "
                           f"{r['ppl']:.3f}.")
    return out


def goals(rows: list[dict], fp: float) -> list[str]:
    """The issue's goals, per head mode: the best per-word variant at or under the bits."""
    out = []
    floor = next((r for r in rows if r["series"] == "fp head8" and "ppl" in r), None)
    for bits, pct in GOALS:
        for head in ("tied", "head8"):
            cands = [r for r in rows if r["series"].startswith("word-") and "ppl" in r
                     and r["head"] == head and r["avg"] <= bits + 1e-6]
            if not cands:
                continue
            b = min(cands, key=lambda r: r["ppl"])
            d = 100 * (b["ppl"] / fp - 1)
            what = ("the tied table (embedding and LM head)" if head == "tied" else
                    "the embedding, with the LM head its own int8 table")
            out.append(f"- <= {bits:g} average code bits within +{pct:g}% of FP, {what}: "
                       f"**{'met' if d <= pct else 'not met'}**: best {b['name']}, "
                       f"{b['avg']:.3f} code bits ({b['bpe']:.3f} incl. scales), perplexity "
                       f"{b['ppl']:.3f} ({_delta(b['ppl'], fp)})"
                       + (f"; the FP embedding with the same int8 head: {floor['ppl']:.3f} "
                          f"({_delta(floor['ppl'], fp)})." if head == "head8" and floor
                          else "."))
    return out


def render(rows, args, command, started, wall, machine, text_path, sources, unseen, vocab, dim,
           rest, n_ids, eval_end, n_wins, counts, plot_path, deciles, eval_unseen, n_targets
           ) -> str:
    fp = next(r["ppl"] for r in rows if r["series"] == "fp")
    src = "; ".join(f"{s['source']}: {s['tokens']:,} tokens ({s['distinct']:,} distinct ids)"
                    for s in sources)
    reach = "; ".join(f"unseen={mode}: " + ", ".join(
        f"tiers {'/'.join(map(str, b))}: [{lo:g}, {hi:.4f}]"
        for b, lo, hi in intervals(counts, mode)) for mode in ("lowest", "rank"))
    dec = [f"| {d['ids']} | {100 * d['seen']:.1f}% | {d['unseen_a']:,} "
           f"| {100 * d['held_out_seen']:.2f}% |" for d in deciles]
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
         f"{vocab:,} ids seen, **{unseen:,} unseen** ({100 * unseen / vocab:.1f}%); "
         f"{eval_unseen} of the {n_targets} scored tokens have an unseen id."),
        "",
        ("Do token ids carry frequency information? Gemma's SentencePiece vocabulary is "
         "ordered by piece score, so a low id should be a more common piece. Per decile of "
         "the id range: the share of ids seen in all the counting text, and, as a held-out "
         "test of the `unseen=\"rank\"` rule, of the ids unseen in SST-2 + pydoc, the share "
         "that occurs in the held-out wikitext tokens:"),
        "",
        "| ids | seen | unseen in SST-2 + pydoc | of those, in held-out wikitext |",
        "|---|---:|---:|---:|",
        *dec,
        "",
        (f"So unseen ids are ranked after the seen ones by id ascending (`unseen=\"rank\"`) "
         f"and tier boundaries may cut through them. Averages the budget mode reaches: "
         f"{reach}. Tier bits: 4/3/.../lo with lo = ceil(c) - 1 for `rank` (at least 1), "
         f"the smallest lo that reaches c for `lowest`."),
        "",
        ("| variant | head | tier bits : rows | avg code bits | bits/elem incl. scales "
         "| eval tokens' mean bits | table MB | model MB | rel. error | perplexity | Δ vs FP "
         "| quantize / eval s | note |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[_fmt_row(r, fp) for r in rows],
        "",
        ("Names: `word-<code> g<group> <unseen> @ <target>`: per-word tiers by frequency; "
         "`blind-`: the same tiers with tokens assigned at random; g64 = one alpha set per 64 "
         "columns, gD = one per row. Columns: avg code bits = plane bits per element (the "
         "issue's measure; scales and remap excluded); bits/elem incl. scales = planes + fp16 "
         "alphas (BCQ: one per plane and group) or fp16 scale and offset (uniform: one each "
         "per group), remap excluded; eval tokens' mean bits = mean bit width of the rows of "
         "the scored tokens; table MB = packed planes + fp16 scales + int32 remap per token "
         "when more than one tier holds rows (FP: fp16), + the separate int8 LM head (codes + "
         "one fp16 scale per row) for `head8`; model MB = that + the other "
         f"{rest:,} parameters at fp16; rel. error = ‖W − W'‖_F / ‖W‖_F of the embedding "
         "table; Δ vs FP as a percentage below 2x FP's perplexity, as a factor above; seconds "
         "on 2 shared cores, progress information, not performance. Counts and every plan "
         f"are saved as JSON in `{args.work}` by the run."),
    ]
    if plot_path is not None:
        rel = os.path.relpath(plot_path.resolve(),
                              (args.out or REPO / "docs/accuracy.md").resolve().parent)
        parts += ["", f"![perplexity vs embedding size]({rel})"]
    if lines := goals(rows, fp):
        parts += ["", ("Against the issue's goals (scored on "
                       f"{n_targets} tokens: a difference of a few tenths of a percent is "
                       "within what another text sample could move):"), *lines]
    if lines := reading(rows):
        parts += ["", "From this run:", *lines]
    parts += [
        "",
        *run_footer(command, started, wall, machine, args.threads, note=f"BCQ {args.iters} rounds"),
        (f"- model: gemma-3-270m-q4_k_m.gguf sha256 {GEMMA_SHA256[:16]}…; data: {DATA} sha256 "
         f"{sha256(text_path)[:16]}…, {n_ids} tokens"),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"gemma_word_bits: {e}")
