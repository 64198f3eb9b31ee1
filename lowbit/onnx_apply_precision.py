"""``apply_precision_onnx``: a ``PrecisionPlan`` applied to a float ONNX model; the result is a
pruned, mixed-format QDQ ONNX model (onnxruntime runs it; ``lowbit.compile`` lowers it).

    plan = lowbit.search_precision(gm, Budget(avg_bits=4), ...)      # or PrecisionPlan.load
    qmodel = apply_precision_onnx("model.onnx", plan, out="model.mixed.onnx")

The ONNX side of ``lowbit.apply_precision``, one ``Pipeline`` on a copy of the model (a given
``onnx_ir.Model`` or file is never changed; ``out`` is written atomically):

1. ``UpgradeOpset(21)`` when the file is older (the QDQ forms need opset 21);
2. ``PruneSubgroups`` (``passes/onnx/prune_subgroups.py``): pruned heads (with their GQA kv
   head) and FFN neuron blocks leave the graph, Reshape / Expand head counts shrink, a linear
   pruned whole becomes its bias (``precision_plan.match_plan`` decides what prunes);
3. ``SplitRowBlocks``: a linear whose row blocks differ in format becomes one MatMul per block,
   concatenated;
4. ``QuantizeFormats``: fp16 blocks rounded, BCQ and 2-3-bit code blocks as ``lowbit.BCQLinear``
   nodes (``passes/onnx/bcq.py``'s form and function), "fp16" inputs rounded (a Cast to
   FLOAT16 and back), each block's storage recorded;
5. ``Calibrate`` (here: it runs onnxruntime, which passes may not import), only with
   ``calibration``: static u8 ranges of the int8 inputs, observed on that graph;
6. ``InsertFormatQDQ``: int8 per-channel, int4 group-wise (INT4, blocked DequantizeLinear) and
   other uniform weights as ``InsertQDQ`` writes them, plus the int8 inputs' Q/DQ.

Inputs follow the plan entries' ``act`` as on FX ("int8": per-channel int8 weights and a
static u8 input, calibration required; "fp16": rounded to half); a plan that names no input
choices is weight-only unless ``calibration`` is given (then int8 per-row blocks are W8A8). Reports:
``model.meta["lowbit_pruning"]`` / ``["lowbit_precision"]`` / ``["lowbit_pipeline"]``, the first
two also in ``metadata_props`` (JSON, saved with the file).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

from lowbit.errors import ConfigError
from lowbit.onnx_quantize import UpgradeOpset
from lowbit.passes.infra import Pass, PassResult, Pipeline
from lowbit.passes.onnx.calibrate import calibrate
from lowbit.passes.onnx.insert_qdq import QDQ_OPSET
from lowbit.passes.onnx.load import has_external_data, load_onnx, save_onnx
from lowbit.passes.onnx.prune_subgroups import PruneSubgroups
from lowbit.passes.onnx.quantize_formats import InsertFormatQDQ, QuantizeFormats, activation_sites
from lowbit.passes.onnx.split_rows import SplitRowBlocks
from lowbit.passes.precision_plan import check_calibration
from lowbit.search.plan import PrecisionPlan

__all__ = ["apply_precision_onnx"]


@dataclasses.dataclass(frozen=True)
class Calibrate(Pass):
    """Static ranges of the int8 blocks' inputs (``activation_sites``) from onnxruntime runs of
    ``batches``, into ``out`` (scale, zero point per site). Changes no node."""

    in_place = True
    batches: Iterable[Any] | None
    out: dict = dataclasses.field(default_factory=dict)
    progress: bool = True

    def call(self, model: ir.Model) -> PassResult:
        sites = activation_sites(model)
        if sites and self.batches is not None:
            from lowbit.backends.onnxruntime import OrtRunner

            self.out.update(calibrate(model, sites, self.batches, runner=OrtRunner,
                                      progress=self.progress))
        return PassResult(model, False)


def _load(model_or_path) -> tuple[ir.Model, pathlib.Path | None]:
    if isinstance(model_or_path, ir.Model):
        return model_or_path.clone(), None
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return ir.from_proto(model_or_path), None
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_onnx(model_or_path), pathlib.Path(model_or_path)
    raise ConfigError(f"apply_precision_onnx takes an ONNX path, onnx.ModelProto or "
                      f"onnx_ir.Model, got {type(model_or_path).__name__}")


def apply_precision_onnx(model_or_path, plan: PrecisionPlan, *,
                         calibration: Iterable[Any] | None = None,
                         out: str | os.PathLike | None = None,
                         progress: bool = True) -> ir.Model:
    """``plan`` applied to a copy of an ONNX model (module docstring).

    Args:
        model_or_path: a float ONNX model (path, ``onnx.ModelProto`` or ``onnx_ir.Model``, as
            ``lowbit.export_onnx`` or ``torch.onnx.export`` write it); not modified.
        plan: a ``lowbit.search.PrecisionPlan`` over its linears (by module name, as FX names
            them; linears it does not list stay float).
        calibration: batches (``{input name: array}``): the ranges of "int8" inputs
            (required when the plan has any); for a plan naming no inputs, int8 blocks
            become W8A8.
        out: also write the result there (atomically; external data kept external).
        progress: report BCQ fits and calibration on stderr.

    Returns the pruned, quantized ``onnx_ir.Model``.

    Raises:
        ConfigError: a plan that does not fit the model (naming the entry), a pruning the
            graph cannot take structurally (naming the node), ``out`` equal to the input file,
            "int8" inputs without ``calibration`` (naming the linears).
        CalibrationError: empty or NaN calibration batches.
        OnnxModelError: an unreadable file or too old an opset.
    """
    if not isinstance(plan, PrecisionPlan):
        raise ConfigError(f"apply_precision_onnx takes a lowbit.search.PrecisionPlan "
                          f"(search_precision, PrecisionPlan.load), got {type(plan).__name__}")
    legacy = check_calibration(plan, calibration)
    model, src = _load(model_or_path)
    if out is not None and src is not None and pathlib.Path(out).resolve() == src.resolve():
        raise ConfigError(f"refusing to overwrite the input model {src}: give another out")
    from lowbit.finite_weights import check_finite_weights

    check_finite_weights(model)
    external = has_external_data(model)
    qparams: dict = {}
    pipeline = Pipeline([UpgradeOpset(QDQ_OPSET), PruneSubgroups(plan), SplitRowBlocks(),
                         QuantizeFormats(plan.space, legacy, progress),
                         Calibrate(calibration, qparams, progress),
                         InsertFormatQDQ(plan.space, qparams)], name="apply_precision (ONNX)")
    model = pipeline(model).graph
    model.meta["lowbit_pipeline"] = pipeline.report
    if out is not None:
        save_onnx(model, out, external_data=external or None)
    return model
