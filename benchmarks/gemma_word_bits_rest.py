#!/usr/bin/env python
"""Gemma-3-270M wikitext-2 perplexity with the per-word embedding of
``benchmarks/gemma_word_bits.py`` *combined* with a recipe on the rest of the model
(W8A8 static, or W4A16 with groups of 128).

    python benchmarks/gemma_word_bits_rest.py [--rest none,W8A8,W4A16_G128] [--bits 2.5,3]
        [--methods uniform] [--group 64] [--unseen rank] [--head tied,head8] [--n-calib 4]
        [--tokens 2048] [--ctx 512] [--counts /tmp/lb/word_bits/counts.json]
        [--work /tmp/lb/word_bits_rest] [--iters 15] [--threads 2] [--out docs/accuracy.md]
        [--quick]

1. Model, evaluation windows, token counts and table variants are those of
   ``gemma_word_bits.py`` (imported, not copied): FP and ``word-<method> g<group> <unseen> @ T``
   for each ``T`` of ``--bits`` (``plan_variants`` without the blind / rule / row / tensor
   controls), each tied (the LM head reads the table) and, with ``head8`` in ``--head``, with
   the LM head its own per-row int8 copy of the FP table. Counts: ``--counts`` (written by
   ``gemma_word_bits.py``) when it was counted after the same evaluation windows, else counted
   again and saved in ``--work``.
2. The model is captured once (``lowbit.capture(lm, (window,))``, ``[1, ctx]``). Per table,
   the grouped table is dequantized (``quantize_embedding(...).dequantize()``, what the eager
   script evaluates) and written into the captured graph's one tied parameter; then, per
   ``--rest`` recipe ``R``, ``lowbit.quantize(graph, R, calibration=...)`` (a copy; ``none``:
   a plain copy). The calibration (W8A8's static u8 ranges) therefore sees the quantized
   table, as a deployed model would; calibration windows: the first ``--n-calib`` windows
   ``[BOS] + 511 tokens`` right after the evaluation tokens (inside the text the counts come
   from, disjoint from the evaluation). The recipes' roles leave the embedding and the
   ``head`` linear alone: the run checks that the head's weight is still the table (not a
   dequantize) and its input is not quantized. ``head8`` unties the head in the quantized
   graph (its weight input becomes a separate int8-dequantized buffer); the head's input is
   float, so the calibration is shared by ``tied`` and ``head8``.
3. Sizes: table bytes as ``gemma_word_bits.py`` (``TieredEmbedding.nbytes()``; FP at fp16)
   (+ the int8 head: codes + an fp16 scale per row); the rest from the quantized graph:
   ``*.weight_i8`` at 8 bits, ``*.weight_i4`` at 4 bits (stored one per int8), ``*.weight_scale``
   at fp16 (symmetric grids: zero points are 0, not counted), every other parameter at fp16;
   the per-tensor activation ranges (a scale and a zero point per quantizer) are not counted.

Everything in the output comes from the run; ``--out`` replaces the section between
``<!-- gemma-word-bits-rest:begin -->`` and ``<!-- gemma-word-bits-rest:end -->`` (placed right
after the ``gemma-word-bits`` section when it is not there yet).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gemma_word_bits as wb
from gemma_ppl import DATA, perplexity, windows
from sst2_probe import replace_section, run_footer, sha256, start_run, write_atomic

import lowbit
from lowbit import recipes
from lowbit.data import shared_data_dir
from lowbit.errors import ConfigError
from lowbit.models import GEMMA_SHA256, load_gemma
from lowbit.passes.fx.spot import find_transformer
from lowbit.quant import bcq

MARKER = "gemma-word-bits-rest"
AFTER = "<!-- gemma-word-bits:end -->"
HEAD8 = "lowbit_head8_weight"
log = wb.log


def load_counts(path: pathlib.Path, tok, ids, eval_end: int, vocab: int, work: pathlib.Path
                ) -> tuple[torch.Tensor, str]:
    """gemma_word_bits.py's counts if they were taken after the same evaluation tokens."""
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        held = data["sources"][-1]["source"]
        if data["vocab_size"] == vocab and f"tokens {eval_end}.." in held:
            return torch.tensor(data["counts"], dtype=torch.int64), (
                f"`{path}`, written by gemma_word_bits.py (held-out part: {held})")
        log(f"{path}: counted for other evaluation windows ({held}); counting again")
    counts, sources, _ = wb.count_tokens(tok, ids, eval_end, vocab)
    wb.save_json(work / "counts.json", {"vocab_size": vocab, "sources": sources,
                                        "counts": counts.tolist()})
    return counts, f"counted by this run, saved to `{work / 'counts.json'}`"


def head_of(gm) -> tuple[str, str]:
    """(head linear's node name, the tied table's attribute), checking the tie."""
    tmap = find_transformer(gm)
    heads = [ref for role, ref in tmap.linears() if role == "head"]
    emb = [e for e in tmap.embeddings if e.role == "embedding.word"]
    if len(heads) != 1 or len(emb) != 1:
        raise SystemExit(f"expected one head and one word embedding, got {heads} {emb}")
    w = heads[0].node.args[1]
    if w.op != "get_attr" or emb[0].node.args[0] is not w:
        raise SystemExit("expected the embedding and the LM head to read one get_attr")
    return heads[0].node.name, w.target


def check_head(g, head: str, table: str) -> None:
    """The rest recipe left the head alone: weight = the table, input not quantized."""
    node = next(n for n in g.graph.nodes if n.name == head)
    x, w = node.args[0], node.args[1]
    if w.op != "get_attr" or w.target != table or "quantized_decomposed" in str(x.target):
        raise SystemExit(f"the rest recipe changed the LM head: {node.format_node()}")


def untie(g, head: str, weight: torch.Tensor) -> None:
    """Give the head linear its own weight buffer (the embedding keeps the table)."""
    node = next(n for n in g.graph.nodes if n.name == head)
    g.register_buffer(HEAD8, weight)
    with g.graph.inserting_before(node):
        new = g.graph.get_attr(HEAD8)
    node.replace_input_with(node.args[1], new)
    g.graph.lint()
    g.recompile()


def rest_bytes(g, table: torch.Tensor) -> tuple[int, dict]:
    """Bytes of everything but the table (module docstring, 3.) and what was quantized."""
    nbytes, info = 0, {"w8": 0, "w4": 0, "scales": 0, "float": 0}
    for name, b in g.named_buffers():
        if name.endswith(".weight_i8"):
            nbytes += b.numel()
            info["w8"] += 1
        elif name.endswith(".weight_i4"):
            nbytes += math.ceil(b.numel() / 2)
            info["w4"] += 1
        elif name.endswith(".weight_scale"):
            nbytes += b.numel() * wb.FP_BYTES
            info["scales"] += b.numel()
    for _, p in g.named_parameters():
        if p is not table:
            nbytes += p.numel() * wb.FP_BYTES
            info["float"] += p.numel()
    info["act_q"] = sum(str(n.target) == "quantized_decomposed.quantize_per_tensor.default"
                        for n in g.graph.nodes)
    return nbytes, info


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rest", default="none,W8A8,W4A16_G128",
                   help="recipes for the rest (lowbit.recipes names); none: float")
    p.add_argument("--bits", default="2.5,3", help="per-word targets, average code bits")
    p.add_argument("--methods", default="uniform")
    p.add_argument("--group", default="64")
    p.add_argument("--unseen", default="rank")
    p.add_argument("--head", default="tied,head8")
    p.add_argument("--n-calib", type=int, default=4, help="calibration windows")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--counts", type=pathlib.Path,
                   default=pathlib.Path("/tmp/lb/word_bits/counts.json"))
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/lb/word_bits_rest"))
    p.add_argument("--iters", type=int, default=bcq.DEFAULT_ITERS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 window of 128, 1 calibration window, target 2.5")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.ctx, args.bits, args.iters, args.n_calib = 127, 128, "2.5", 2, 1
    args.rests = [None if r.strip().lower() == "none" else recipes.get(r.strip())
                  for r in args.rest.split(",") if r.strip()]
    # the table variants, as gemma_word_bits.py builds them
    args.wb = wb.parse_args(["--bits", args.bits, "--methods", args.methods, "--group",
                             args.group, "--unseen", args.unseen, "--head", args.head,
                             "--no-blind", "--no-rule", "--row-bits", "", "--tensor-bits", "",
                             "--iters", str(args.iters), "--work", str(args.work)])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command, started, t_start, machine = start_run("gemma_word_bits_rest.py", argv, args.threads)

    lm, tok = load_gemma()
    vocab, dim = lm.model.embed_tokens.weight.shape
    text_path = shared_data_dir() / DATA
    ids = tok(text_path.read_text(encoding="utf-8"), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    n = args.ctx - 1
    eval_end = math.ceil(args.tokens / n) * n
    bos = lm.config.bos_token_id
    eval_wins = windows(ids[:eval_end], args.ctx, bos)
    calib_end = eval_end + args.n_calib * n
    calib = [(w,) for w in windows(ids[eval_end:calib_end], args.ctx, bos)]
    counts, counts_from = load_counts(args.counts, tok, ids, eval_end, vocab, args.work)
    log(f"{DATA}: {len(ids)} tokens; evaluation 0..{eval_end - 1} ({len(eval_wins)} windows), "
        f"calibration {eval_end}..{calib_end - 1} ({len(calib)} windows); counts {counts_from}")

    t = time.perf_counter()
    gm = lowbit.capture(lm, (eval_wins[0],))
    t_capture = time.perf_counter() - t
    head, table_attr = head_of(gm)
    param = gm.get_parameter(table_attr)
    w_fp = param.detach().clone()
    with torch.no_grad():
        diff = float((lm(input_ids=eval_wins[0], use_cache=False).logits
                      - gm(eval_wins[0]).logits).abs().max())
    log(f"captured at {args.ctx} tokens in {t_capture:.0f} s; head {head} reads {table_attr}; "
        f"window 1 logits, graph vs eager: max |diff| {diff:.3g}")
    del lm

    variants = wb.plan_variants(counts, dim, args.wb)
    head8 = wb.head8_table(w_fp) if any("head8" in v.heads for v in variants) else None
    rows = []
    for v in variants:
        log(f"{v.name}:" + (f" tiers {v.plan.bits}, sizes {v.plan.tier_sizes}" if v.plan else ""))
        t = time.perf_counter()
        table, t_bytes, _ = wb.build(v, w_fp, args.iters)
        t_table = time.perf_counter() - t
        with torch.no_grad():
            param.copy_(table)
        del table
        for recipe in args.rests:
            rname = recipe.name if recipe else "none"
            t = time.perf_counter()
            g = copy.deepcopy(gm) if recipe is None else lowbit.quantize(
                gm, recipe, calibration=calib, progress=False)
            t_quant = time.perf_counter() - t
            check_head(g, head, table_attr)
            r_bytes, info = rest_bytes(g, g.get_parameter(table_attr))
            for h in v.heads:                    # "tied" before "head8": untie is one-way
                if h == "head8":
                    untie(g, head, head8[0])
                name = v.name + (", head8" if h == "head8" else "")
                res = perplexity(g, eval_wins, f"{name} + {rname}")
                row = {"table": name, "rest": rname, "head": h, "target": v.target,
                       "avg": v.plan.average_bits if v.plan else None,
                       "table_bytes": t_bytes, "head_bytes": head8[1] if h == "head8" else 0,
                       "rest_bytes": r_bytes, "info": info, "t_table": t_table,
                       "t_quant": t_quant, **res}
                row["model_bytes"] = t_bytes + row["head_bytes"] + r_bytes
                rows.append(row)
                log(f"  -> {name} + {rname}: ppl {res['ppl']:.3f}, model "
                    f"{row['model_bytes'] / 1e6:.1f} MB; quantize {t_quant:.0f} s, eval "
                    f"{res['t_eval']:.0f} s")
            del g
        with torch.no_grad():
            param.copy_(w_fp)

    wb.save_json(args.work / "results_rest.json", rows)
    wall = time.perf_counter() - t_start
    section = render(rows, args, command, started, wall, machine, text_path, len(ids), eval_end,
                     len(eval_wins), calib_end, len(calib), counts_from, diff, t_capture)
    log("\n" + section)
    if args.out is not None:
        place(args.out, section)
        log(f"\nwrote the {MARKER} section of {args.out}")
    return 0


def place(path: pathlib.Path, section: str) -> None:
    """replace_section, with the markers put right after the gemma-word-bits section first."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    begin, end = f"<!-- {MARKER}:begin -->", f"<!-- {MARKER}:end -->"
    if begin not in text and AFTER in text:
        i = text.index(AFTER) + len(AFTER)
        write_atomic(path, text[:i] + f"\n\n{begin}\n{end}" + text[i:])
    replace_section(path, section, MARKER)


def render(rows, args, command, started, wall, machine, text_path, n_ids, eval_end, n_wins,
           calib_end, n_calib, counts_from, diff, t_capture) -> str:
    by = {(r["table"], r["rest"]): r for r in rows}
    fp = by.get(("FP", "none"))
    ref = fp["nll"] if fp else None

    def delta(nll):
        return "-" if ref is None else f"{100 * (math.exp(nll - ref) - 1):+.1f}%"

    lines = [("| embedding table (head) | rest | avg code bits | table MB | rest MB | model MB "
             "| perplexity | Δ vs FP | Δ vs same table, float rest | quantize / eval s |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {r.name if r else "none": i for i, r in enumerate(args.rests)}
    for r in sorted(rows, key=lambda r: order[r["rest"]]):
        base = by.get((r["table"], "none"))
        same = "-" if base is None or r["rest"] == "none" else \
            f"{100 * (math.exp(r['nll'] - base['nll']) - 1):+.1f}%"
        mb = f"{r['table_bytes'] / 1e6:.1f}" + (f" + {r['head_bytes'] / 1e6:.1f}"
                                                if r["head_bytes"] else "")
        avg = "16 (fp)" if r["avg"] is None else f"{r['avg']:.3f}"
        lines.append(f"| {r['table']} | {r['rest']} | {avg} | {mb} | {r['rest_bytes'] / 1e6:.1f} "
                     f"| {r['model_bytes'] / 1e6:.1f} | {r['ppl']:.3f} | {delta(r['nll'])} "
                     f"| {same} | {r['t_quant']:.0f} / {r['t_eval']:.0f} |")
    what = []
    for rname in order:
        r = next((r for r in rows if r["rest"] == rname), None)
        if r is None or rname == "none":
            continue
        i = r["info"]
        what.append(f"{rname}: {i['w8'] + i['w4']} linear weights at "
                    f"{'8' if i['w8'] else '4'} bits ({i['scales']:,} fp16 weight scales), "
                    f"{i['act_q']} static activation quantizers, {i['float']:,} parameters "
                    f"left float (norm gains)")
    reading = []
    for r in rows:
        fp_name = "FP, head8" if r["head"] == "head8" else "FP"
        base, fp_h = by.get((r["table"], "none")), by.get((fp_name, "none"))
        alone = by.get((fp_name, r["rest"]))
        if r["rest"] == "none" or r["table"] == fp_name or not (base and fp_h and alone):
            continue
        a, b = base["nll"] - fp_h["nll"], alone["nll"] - fp_h["nll"]
        reading.append(f"- {r['table']} + {r['rest']}: mean NLL {r['nll'] - fp_h['nll']:+.4f} "
                       f"vs {fp_name}; the table alone {a:+.4f}, {r['rest']} alone {b:+.4f}, "
                       f"sum {a + b:+.4f}.")
    parts = [
        ("## Gemma-3-270M: per-word embedding combined with W8A8 / W4A16 of the rest "
        "(`benchmarks/gemma_word_bits_rest.py`)"),
        "",
        (f"Tables of the section above (same counts, plans and codes; the fitted table "
         f"dequantized, `quantize_embedding(...).dequantize()`, and written into the captured "
         f"graph's one tied 262,144 x 640 parameter, as the eager script swaps it) with a "
         f"recipe on the other linears. The model is captured once at [1, {args.ctx}] "
         f"(`lowbit.capture`, {t_capture:.0f} s; window 1's logits, graph vs eager model: max "
         f"|diff| {diff:.3g}); per table and rest recipe, `lowbit.quantize(graph, recipe, "
         f"calibration=...)`, then perplexity of the quantized graph on the same {n_wins} "
         f"windows of {args.ctx} (tokens 0..{eval_end - 1}, every token scored). Calibration "
         f"(W8A8's static u8 ranges, min-max): {n_calib} windows `[BOS] + {args.ctx - 1}` "
         f"tokens, tokens {eval_end}..{calib_end - 1} of `{DATA}` (right after the evaluation "
         f"windows; part of the text the token counts come from), run with the quantized "
         f"table in place. Counts: {counts_from}. Recipes: "
         f"`lowbit.recipes.W8A8` (i8 per-channel weights, u8 per-tensor static activations), "
         f"`W4A16_G128` (i4 symmetric, a scale per 128 inputs, round to nearest, float "
         f"activations); plain recipes, no SmoothQuant (see the gemma-ppl section). Their "
         f"roles exclude the embedding and the `head` linear: the run checked that in every "
         f"quantized graph the head still reads the table (or, `head8`, its own per-row int8 "
         f"copy of the FP table, as in the section above) with a float input. "
         + "; ".join(what) + "."),
        "",
        *lines,
        "",
        ("Columns: table MB = packed planes + fp16 scales + int32 remap (FP: fp16), + the "
         "separate int8 head for `head8`; rest MB = quantized linear weights (i8: 1 byte, i4: "
         "half a byte per weight) + fp16 weight scales + the other parameters at fp16 (`none`: "
         "every other parameter at fp16); model MB = both; Δ vs FP = against the FP table with "
         "a float rest (graph), as a percentage; Δ vs same table, float rest = what the rest "
         "recipe adds to that table; the quantize column includes calibration; seconds on 2 "
         "shared cores, progress information, not performance."),
    ]
    if reading:
        parts += ["", ("Do the two errors add? Mean NLL against the FP table with the same head "
                  "(a difference of mean NLL d is a perplexity ratio e^d):"), *reading]
    parts += [
        "",
        *run_footer(command, started, wall, machine, args.threads),
        (f"- model: gemma-3-270m-q4_k_m.gguf sha256 {GEMMA_SHA256[:16]}…; data: {DATA} sha256 "
         f"{sha256(text_path)[:16]}…, {n_ids} tokens"),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"gemma_word_bits_rest: {e}")
