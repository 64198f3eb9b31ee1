#!/usr/bin/env python
"""SST-2 linear-probe accuracy of all-MiniLM-L6-v2 with only its word embedding quantized:
per-word mixed precision by token frequency (Chung et al. 2020) vs per-row and per-tensor.

    python benchmarks/minilm_word_bits.py [--bits 1.5,2,2.5,3,4] [--methods bcq,uniform]
        [--group none,64] [--unseen rank] [--row-bits 2,3,4] [--row-methods uniform,bcq]
        [--tensor-bits 4,6,8] [--no-blind] [--n-train 8000] [--iters 15] [--threads 2]
        [--work /tmp/lb/minilm_word_bits] [--out docs/accuracy.md]

1. The real all-MiniLM-L6-v2 (``lowbit.models.load_minilm``), eager, fp32. Its word embedding
   ``embeddings.word_embeddings.weight`` (30522 x 384, not tied to anything) is overwritten by
   each variant's dequantized table and put back afterwards; nothing else is quantized.
2. SST-2 as ``benchmarks/sst2_probe.py`` evaluates it: sentence embedding = L2-normalised mean
   pool; a logistic-regression probe (``sst2_probe.Probe``) trained once on the FP32 embeddings
   of the first ``--n-train`` train sentences and frozen; every variant's dev embeddings
   (872 sentences, truncation at 128 tokens) go through it. Reported: dev accuracy, prediction
   flips vs FP32 with McNemar's p, embedding cosine vs FP32 (``sst2_probe.compare``).
3. Token counts: all SST-2 train sentences through MiniLM's tokenizer without special tokens
   (``token_counts``), plus one ``[CLS]`` and one ``[SEP]`` per sentence (what the model reads;
   ``[PAD]`` is masked out of attention and pooling). Dev is never counted. Saved as JSON in
   ``--work``, with the id-decile measurement ``unseen="rank"`` relies on (per decile: share
   of ids seen; of the ids unseen in the first half of train, the share seen in the second).
4. Variants, for every ``--group``: ``word-<method> g<group> <unseen> @ T`` =
   ``plan_for_budget`` at average code bits ``T`` with the tier bits of
   ``gemma_word_bits.pick_bits``; ``blind-...`` the same tiers assigned at random;
   ``row-<method> g<group> <b>`` every row ``b`` bits; ``tensor-sym <b>`` one symmetric scale
   for the whole table. Identical tables (same method, group and per-token bits) are evaluated
   once. Sizes from ``TieredEmbedding.nbytes()``.

Everything in the output comes from the run; ``--out`` replaces the section between
``<!-- minilm-word-bits:begin -->`` and ``<!-- minilm-word-bits:end -->``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_word_bits import (
    Variant,
    build,
    code_target,
    gtag,
    intervals,
    pick_bits,
    save_json,
    table_key,
)
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

from lowbit.data import read_sst2, shared_data_dir
from lowbit.errors import ConfigError
from lowbit.models import load_minilm
from lowbit.models.minilm import MINILM_SHA256
from lowbit.quant import bcq
from lowbit.quant.word_bits import WordBitsPlan, frequency_blind, plan_for_budget, token_counts

MARKER = "minilm-word-bits"
TABLE = "embeddings.word_embeddings.weight"
SEQ = 128


def log(msg: str) -> None:
    print(msg, flush=True)


def count(tok, texts: list[str], vocab: int) -> torch.Tensor:
    """Counts without special tokens, plus one [CLS] and one [SEP] per text."""
    c = token_counts(texts, tok, vocab)
    c[tok.cls_token_id] += len(texts)
    c[tok.sep_token_id] += len(texts)
    return c


def id_deciles(counts: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> list[dict]:
    v, out = counts.numel(), []
    for k in range(10):
        lo, hi = k * v // 10, (k + 1) * v // 10
        un = first[lo:hi] == 0
        out.append({"ids": f"{lo}..{hi - 1}", "seen": float((counts[lo:hi] > 0).double().mean()),
                    "unseen_a": int(un.sum()),
                    "held_out_seen": float((second[lo:hi][un] > 0).double().mean())
                    if un.any() else 0.0})
    return out


def plan_variants(counts: torch.Tensor, dim: int, args) -> list[Variant]:
    out, v = [Variant("FP32", "fp")], counts.numel()
    for group in args.group:
        g = gtag(group)
        for method in args.methods:
            words = []
            for unseen in args.unseen:
                series = f"word-{method} {g} {unseen}"
                for t in args.bits:
                    bits, why = pick_bits(counts, code_target(t, method, group, dim, "code"),
                                          unseen, "auto")
                    name = f"{series} @ {t:g}"
                    if bits is None:
                        out.append(Variant(name, series, target=t, infeasible=why))
                        continue
                    words.append(Variant(name, series, plan_for_budget(
                        counts, t, bits, method=method, group=group, unseen=unseen), target=t))
            out += words
            if args.blind:
                out += [Variant(w.name.replace("word-", "blind-", 1), w.series.replace(
                    "word-", "blind-", 1), frequency_blind(w.plan, seed=0), target=w.target)
                    for w in words if sum(n > 0 for n in w.plan.tier_sizes) > 1]
        out += [Variant(f"row-{m} {g} {b}", f"row-{m} {g}", WordBitsPlan(
            (b,), torch.zeros(v, dtype=torch.int64), counts, m, group=group))
            for m in args.row_methods for b in args.row_bits]
    out += [Variant(f"tensor-sym {b}", "tensor-sym", tensor_bits=b) for b in args.tensor_bits]
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    floats = lambda s: [float(x) for x in s.split(",") if x.strip()]
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]
    words = lambda s: [m.strip() for m in s.split(",") if m.strip()]
    p.add_argument("--bits", type=floats, default=[1.5, 2, 2.5, 3, 4],
                   help="per-word targets, average code bits")
    p.add_argument("--methods", type=words, default=["bcq", "uniform"])
    p.add_argument("--group", type=lambda s: [None if x == "none" else int(x) for x in words(s)],
                   default=[None, 64], help="columns per alpha set, a list; none = per row")
    p.add_argument("--unseen", type=words, default=["rank"], help="lowest, rank (a list)")
    p.add_argument("--row-bits", type=ints, default=[2, 3, 4])
    p.add_argument("--row-methods", type=words, default=["uniform", "bcq"])
    p.add_argument("--tensor-bits", type=ints, default=[4, 6, 8])
    p.add_argument("--no-blind", dest="blind", action="store_false")
    p.add_argument("--n-train", type=int, default=8000, help="probe training sentences")
    p.add_argument("--n-dev", type=int, default=None, help="dev sentences (default: all 872)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=bcq.DEFAULT_ITERS, help="BCQ refinement rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/minilm_word_bits"))
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    for opt, got, ok in (("--methods", args.methods, ("bcq", "uniform")),
                         ("--row-methods", args.row_methods, ("bcq", "uniform")),
                         ("--unseen", args.unseen, ("lowest", "rank"))):
        if any(m not in ok for m in got):
            p.error(f"{opt}: got {got}; choose from {', '.join(ok)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command, started, t_start, machine = start_run("minilm_word_bits.py", argv, args.threads)

    train_texts, train_labels = read_sst2("train")
    dev_texts, dev_labels = read_sst2("dev")
    if args.n_dev:
        dev_texts, dev_labels = dev_texts[:args.n_dev], dev_labels[:args.n_dev]
    model, tok = load_minilm()
    emb = dict(model.named_parameters())[TABLE]
    vocab, dim = emb.shape
    w_fp = emb.detach().clone()
    y_dev = torch.tensor(dev_labels)

    half = len(train_texts) // 2
    first, second = count(tok, train_texts[:half], vocab), count(tok, train_texts[half:], vocab)
    counts = first + second
    unseen = int((counts == 0).sum())
    dev = SortedBatches(tok, dev_texts, args.batch, SEQ)
    dev_ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in dev.batches])
    deciles = id_deciles(counts, first, second)
    log(f"counts: {len(train_texts)} train sentences, {int(counts.sum())} tokens, "
        f"{vocab - unseen} of {vocab} ids seen; dev tokens on unseen ids: "
        f"{int((counts[dev_ids] == 0).sum())} of {dev_ids.numel()}")
    for d in deciles:
        log(f"ids {d['ids']}: {100 * d['seen']:.1f}% seen; of the {d['unseen_a']} unseen in "
            f"train's first half, {100 * d['held_out_seen']:.2f}% occur in the second")
    save_json(args.work / "counts.json", {"vocab_size": vocab, "counts": counts.tolist(),
                                          "id_deciles": deciles})

    t = time.perf_counter()
    train = SortedBatches(tok, train_texts[:args.n_train], args.batch * 2, SEQ)
    probe = Probe(dim).fit(embed_fx(model, train), torch.tensor(train_labels[:args.n_train]))
    log(f"probe: {args.n_train} train sentences, train acc {100 * probe.info['train_acc']:.2f}%"
        f", {time.perf_counter() - t:.0f} s")

    rows, done, fp_emb, fp_pred = [], {}, None, None
    for v in plan_variants(counts, dim, args):
        row = {"name": v.name, "series": v.series}
        if v.infeasible:
            rows.append({**row, "infeasible": v.infeasible})
            log(f"{v.name}: infeasible: {v.infeasible}")
            continue
        if v.plan is not None:
            per_token = torch.tensor(v.plan.bits, dtype=torch.float64)[v.plan.tier]
            row.update(bits=v.plan.bits, sizes=v.plan.tier_sizes, avg=v.plan.average_bits,
                       dev_bits=float(per_token[dev_ids].mean()),
                       one_tier=sum(n > 0 for n in v.plan.tier_sizes) == 1)
        elif v.tensor_bits is not None:
            row.update(avg=float(v.tensor_bits), dev_bits=float(v.tensor_bits))
        key = table_key(v.plan) if v.plan is not None else (v.name,)
        if key in done:
            same = done[key]
            row.update({k: same[k] for k in ("m", "bytes", "bpe", "rel_err", "t_quant",
                                             "t_eval")}, same_as=same["name"])
        else:
            t = time.perf_counter()
            table, row["bytes"], row["bpe"] = build(v, w_fp, args.iters)
            row["t_quant"] = time.perf_counter() - t
            row["rel_err"] = float((table - w_fp).norm() / w_fp.norm())
            t = time.perf_counter()
            with torch.no_grad():
                emb.copy_(table)
            try:
                x = embed_fx(model, dev)
            finally:
                with torch.no_grad():
                    emb.copy_(w_fp)
            pred = probe.predict(x)
            if fp_emb is None:
                fp_emb, fp_pred = x, pred
            row["m"] = compare(x, fp_emb, pred, fp_pred, y_dev)
            row["t_eval"] = time.perf_counter() - t
            done[key] = row
        rows.append(row)
        log(f"{v.name}: acc {row['m']['acc']:.2f}%, flips {row['m']['flips']}, cos "
            f"{row['m']['cos_mean']:.5f}, {row['bytes'] / 1e6:.2f} MB, {row['bpe']:.3f} "
            f"bits/elem incl. scales, rel. error {row['rel_err']:.4f}")

    save_json(args.work / "results.json", rows)
    wall = time.perf_counter() - t_start
    section = render(rows, args, command, started, wall, machine, vocab, dim, counts, deciles,
                     dev, dev_ids, probe, len(train_texts))
    log("\n" + section)
    if args.out is not None:
        replace_section(args.out, section, MARKER)
        log(f"\nwrote the {MARKER} section of {args.out}")
    return 0


def _fmt(r: dict, fp: float, n: int) -> str:
    if "infeasible" in r:
        return f"| {r['name']} | - | - | - | - | - | - | - | - | - | - | - | infeasible |"
    m = r["m"]
    tiers = (f"{'/'.join(map(str, r['bits']))} : {'/'.join(map(str, r['sizes']))}"
             if "bits" in r else "-")
    avg = f"{r['avg']:.3f}" if "avg" in r else "fp"
    ev = f"{r['dev_bits']:.2f}" if "dev_bits" in r else "-"
    note = (f"same table as {r['same_as']}" if "same_as" in r else
            "one tier: a per-row table" if r.get("one_tier") and r["series"].startswith("word-")
            else "")
    return (f"| {r['name']} | {tiers} | {avg} | {r['bpe']:.3f} | {ev} | {r['bytes'] / 1e6:.2f} "
            f"| {r['rel_err']:.4f} | {m['acc']:.2f} | {m['acc'] - fp:+.2f} "
            f"| {m['flips']} ({100 * m['flips'] / n:.1f}%) | {m['broke']} / {m['fixed']} "
            f"| {m['p']:.2g} | {m['cos_mean']:.5f} | {note} |")


def reading(rows: list[dict]) -> list[str]:
    """Generated comparisons: frequency-aware vs frequency-blind at the same tiers; each
    per-word table vs the smallest per-row table of the same code and group at least as large."""
    by = {r["name"]: r for r in rows if "m" in r}
    out = []
    for r in rows:
        blind = by.get(r["name"].replace("word-", "blind-", 1))
        if r["series"].startswith("word-") and "m" in r and blind:
            out.append(f"- {r['name']}: {r['m']['flips']} flips, cos {r['m']['cos_mean']:.5f}; "
                       f"the same tiers at random: {blind['m']['flips']} flips, cos "
                       f"{blind['m']['cos_mean']:.5f}.")
    for r in rows:
        if not (r["series"].startswith("word-") and "m" in r) or r.get("one_tier"):
            continue
        method, g = r["series"].split()[0][5:], r["series"].split()[1]
        rows_ = [u for u in rows if u["series"] == f"row-{method} {g}" and "m" in u
                 and u["bytes"] >= r["bytes"]]
        if rows_:
            u = min(rows_, key=lambda u: u["bytes"])
            out.append(f"- {r['name']} ({r['bytes'] / 1e6:.2f} MB): {r['m']['flips']} flips, "
                       f"accuracy {r['m']['acc']:.2f}%; smallest per-row table at least as "
                       f"large: {u['name']} ({u['bytes'] / 1e6:.2f} MB): {u['m']['flips']} "
                       f"flips, {u['m']['acc']:.2f}%.")
    return out


def render(rows, args, command, started, wall, machine, vocab, dim, counts, deciles, dev,
           dev_ids, probe, n_train_all) -> str:
    fp = rows[0]["m"]["acc"]
    unseen = int((counts == 0).sum())
    dec = [f"| {d['ids']} | {100 * d['seen']:.1f}% | {d['unseen_a']:,} "
           f"| {100 * d['held_out_seen']:.2f}% |" for d in deciles]
    reach = "; ".join(f"unseen={mode}: " + ", ".join(
        f"tiers {'/'.join(map(str, b))}: [{lo:g}, {hi:.4f}]"
        for b, lo, hi in intervals(counts, mode)) for mode in ("lowest", "rank"))
    data = shared_data_dir() / "sst2_dev.tsv"
    return "\n".join([
        ("## all-MiniLM-L6-v2: per-word mixed-precision word embedding, SST-2 "
         "(`benchmarks/minilm_word_bits.py`)"),
        "",
        (f"Only the word embedding ({vocab:,} x {dim}, not tied to a head) is quantized; the "
         f"rest of the model stays fp32. SST-2 dev ({dev.n} sentences, {dev_ids.numel():,} "
         f"tokens) through the frozen probe of `sst2_probe.py` (logistic regression on FP32 "
         f"mean-pooled embeddings of the first {args.n_train} train sentences; train "
         f"accuracy {100 * probe.info['train_acc']:.2f}%)."),
        "",
        (f"Token counts: all {n_train_all:,} SST-2 train sentences through MiniLM's "
         f"tokenizer, plus one [CLS] and one [SEP] per sentence: {int(counts.sum()):,} tokens, "
         f"{vocab - unseen:,} of {vocab:,} ids seen, **{unseen:,} unseen** "
         f"({100 * unseen / vocab:.1f}%); {int((counts[dev_ids] == 0).sum())} of the "
         f"{dev_ids.numel():,} dev tokens have an unseen id. Id order and frequency (per "
         f"decile: ids seen; of the ids unseen in train's first half, the share seen in the "
         f"second):"),
        "",
        "| ids | seen | unseen in train's first half | of those, in the second |",
        "|---|---:|---:|---:|",
        *dec,
        "",
        f"Averages the budget mode reaches: {reach}.",
        "",
        ("| variant | tier bits : rows | avg code bits | bits/elem incl. scales | dev tokens' "
         "mean bits | table MB | rel. error | accuracy % | Δ vs FP32 | flips vs FP32 "
         "| broke / fixed | McNemar p | mean cos | note |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[_fmt(r, fp, dev.n) for r in rows],
        "",
        ("Names and columns as in the Gemma section above (gD: one alpha set per row; g64: "
         "one per 64 columns); dev tokens' mean bits = mean bit width of the rows the dev "
         "tokens (special tokens included) read; table MB = packed planes + fp16 scales + "
         "int32 remap when more than one tier holds rows (FP32: at fp16); flips = dev "
         "predictions that differ from FP32's, broke / fixed = FP32 right and the variant "
         "wrong / the reverse, McNemar p = exact two-sided test of broke vs fixed; mean cos = "
         "mean cosine of the sentence embeddings to FP32's. One dev sentence is "
         f"{100 / dev.n:.2f} points of accuracy, so accuracy differences of a few tenths are "
         "noise; flips and cosine are the finer measures."),
        "",
        "From this run:",
        *reading(rows),
        "",
        *run_footer(command, started, wall, machine, args.threads, note=f"BCQ {args.iters} rounds"),
        (f"- model: all-MiniLM-L6-v2 sha256 {MINILM_SHA256[:16]}…; data: sst2_dev.tsv sha256 "
         f"{sha256(data)[:16]}…"),
    ])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"minilm_word_bits: {e}")
