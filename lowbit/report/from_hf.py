"""A report of a Hugging Face model folder: quantize it as ``lowbit quantize`` does (the recipe,
the calibration text), read the linears off the quantized graph, measure the float model's
per-channel activation ranges on the same text, count the bytes, and compile the graph for the
lowering record (skipped when ``target`` is None).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import lowbit
from lowbit.report.data import Report
from lowbit.report.fx_layers import fx_linears
from lowbit.report.lowering import lower
from lowbit.report.ranges import torch_ranges
from lowbit.report.sizes import fx_sizes

__all__ = ["CALIBRATION_BATCH", "collect_hf"]

CALIBRATION_BATCH = 8          # quantize_hf's calibration batch: the ranges see the same batches


def collect_hf(args: argparse.Namespace, target: Any) -> Report:
    from lowbit import recipes
    from lowbit.data import text_batches
    from lowbit.quantize_cli import TEXT_KEYS, calibration_texts, hf_seq, quantize_hf, tokenizer

    recipe = recipes.get(args.recipe)
    model, qgm, example = quantize_hf(args.model, recipe, args, batch=1, seq=args.seq,
                                      calibration_batch=CALIBRATION_BATCH)
    seq = hf_seq(model.config, args.seq, args.model)
    texts = calibration_texts(args)
    tok = tokenizer(args.tokenizer or args.model, why="the activation ranges are measured on text")
    linears, sites = fx_linears(qgm)
    batches = text_batches(tok, texts, batch_size=CALIBRATION_BATCH, seq_len=seq, keys=TEXT_KEYS)
    torch_ranges(model, sites, batches, total=math.ceil(len(texts) / CALIBRATION_BATCH))
    report = Report(
        model=str(args.model), kind="Hugging Face folder", recipe=recipe.name,
        calibration=(f"{len(texts)} text(s) from {args.calibration}, seq {seq}, batches of "
                     f"{CALIBRATION_BATCH}"),
        linears=linears, sites=sites, sizes=fx_sizes(model, qgm, linears),
        notes=[(f"Activation ranges: the inputs of the float {type(model).__name__}'s linears "
                f"on the calibration text (padding included, as the quantizer's observers saw "
                f"them).")],
        lowbit_version=lowbit.__version__)
    if target is None:
        report.lowering_note = "not compiled (--no-compile)"
    else:
        report.lowering = lower(qgm, example, target, linears)
    return report
