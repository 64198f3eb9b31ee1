"""A report of a QDQ ONNX file, as it is: read the linears off its Q/DQ nodes, measure the
per-channel ranges of the tensors its quantizers read on the calibration text (onnxruntime;
text tokenized by ``--tokenizer``, else the folder the file records as its source, else the
file's own folder), count the bytes of its initializers, and compile it for the lowering record
(skipped when ``target`` is None) at batch 1 (or the file's fixed batch) and ``--seq``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import lowbit
from lowbit.errors import ConfigError
from lowbit.model_files import batch_and_seq, onnx_summary, whole_batches
from lowbit.report.data import Report
from lowbit.report.lowering import lower
from lowbit.report.onnx_layers import onnx_linears
from lowbit.report.ranges import ort_ranges
from lowbit.report.sizes import onnx_sizes

__all__ = ["collect_onnx"]

CALIBRATION_BATCH = 8


def collect_onnx(args: argparse.Namespace, target: Any, recipe: str) -> Report:
    import onnx

    from lowbit.data import text_batches
    from lowbit.quantize_cli import DEFAULT_SEQ, TEXT_KEYS, calibration_texts, tokenizer
    from lowbit.testing.inputs import make_inputs

    path = args.model
    summary = onnx_summary(path)
    batch, seq = batch_and_seq(summary.specs, path, None, args.seq,
                               default_batch=CALIBRATION_BATCH, default_seq=DEFAULT_SEQ)
    proto = onnx.load(str(path))
    linears, sites = onnx_linears(proto.graph)
    if not linears:
        raise ConfigError(f"{path}: no MatMul, Gemm or BCQLinear with a weight initializer: "
                          f"nothing to report")
    sizes = onnx_sizes(proto.graph, linears)
    source = Path(summary.source) if summary.source else None
    folder = args.tokenizer or (source if source and source.is_dir() else path.parent)
    tok = tokenizer(folder, why="the activation ranges are measured on text")
    texts = whole_batches(calibration_texts(args), summary.specs, batch, path,
                          args.num_calibration)
    batches = text_batches(tok, texts, batch_size=batch, seq_len=seq,
                           keys=(*TEXT_KEYS, "token_type_ids"))
    ort_ranges(proto, sites, batches, total=math.ceil(len(texts) / batch))
    del proto
    report = Report(
        model=str(path), kind="QDQ ONNX file", recipe=recipe,
        calibration=f"{len(texts)} text(s) from {args.calibration}, seq {seq}, batches of "
                    f"{batch}",
        linears=linears, sites=sites, sizes=sizes,
        notes=[("Activation ranges: the tensors the file's QuantizeLinear nodes read (the "
                "quantized model's own activations, run by onnxruntime) on the calibration "
                "text, padding included."),
               ("Float sizes: an ONNX file holds no float model; each quantized weight counts "
                "as float32 of its shape.")],
        lowbit_version=lowbit.__version__)
    if target is None:
        report.lowering_note = "not compiled (--no-compile)"
    else:
        b, s = batch_and_seq(summary.specs, path, None, args.seq, default_batch=1,
                             default_seq=DEFAULT_SEQ)
        report.lowering = lower(path, make_inputs(summary.specs, batch=b, seq=s), target,
                                linears)
    return report
