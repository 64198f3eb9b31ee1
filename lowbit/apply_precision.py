"""``lowbit.apply_precision``: a ``PrecisionPlan`` (``lowbit.search_precision``, or written by
hand) applied to a captured graph; the result compiles to one TVM module of mixed kernels.

    plan = lowbit.search_precision(gm, Budget(avg_bits=4), calibration=batches,
                                   granularity=(PerHead(), PerNeurons(64)))
    qgm = lowbit.apply_precision(gm, plan)                  # pruned, mixed formats
    mod = lowbit.compile(qgm, target="cpu")                 # int4 / int8 / BCQ / fp32 kernels
    print(qgm.meta["lowbit_pruning"], mod.meta["lowering"])

One ``Pipeline`` of passes on a copy of ``gm`` (the user's graph is never modified):

1. ``PruneSubgroups``: pruned heads (with their GQA kv head) and FFN neuron blocks leave the
   graph: q / k / v / up / gate lose rows, o / down lose the matching input columns, head
   counts in view / reshape / expand sizes shrink; a linear pruned whole becomes its bias
   (``lowbit.passes.precision_plan`` says what equals what in float);
2. ``SplitRowBlocks``: a linear whose row blocks differ in format becomes one linear per block,
   concatenated;
3. ``QuantizeFormats``: each block takes its format (``precision_plan.storage``: int8 per
   channel, int4 group-wise, uniform 2/3-bit (and affine 4-bit) codes as BCQ planes + offset,
   BCQ, fp32 / fp16);
4. ``Calibrate``, ``Freeze``, ``ConvertToQDQ`` (as ``lowbit.quantize``): fake-quant -> q/dq.

Each linear's input follows its plan entries' ``act``: "fp16" rounds it to half before the
GEMM; "int8" (int8 weights, then per channel whatever the group) quantizes it to static u8 per
tensor, calibrated on ``calibration`` (required then), and lowers to the W8A8 integer kernel.
A plan that names no input choices (its space offers only "fp": plans saved before inputs
were searched) keeps the legacy rule: weight-only unless ``calibration`` is given, then every
int8 per-row block quantizes its input that way; without it int8 weights are dequantized in
the graph (fp32 GEMM in TVM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import fx

from lowbit.errors import ConfigError
from lowbit.passes.fx.convert_qdq import ConvertToQDQ
from lowbit.passes.fx.prune_subgroups import PruneSubgroups
from lowbit.passes.fx.quantize_formats import QuantizeFormats
from lowbit.passes.fx.split_rows import SplitRowBlocks
from lowbit.passes.infra import Pipeline
from lowbit.passes.patterns import TransformerMap
from lowbit.passes.precision_plan import check_calibration
from lowbit.quantize import Calibrate, Freeze, onnx_kind
from lowbit.search.plan import PrecisionPlan
from lowbit.warning_filters import copy_graph

__all__ = ["apply_precision"]


def apply_precision(gm: fx.GraphModule | Any, plan: PrecisionPlan, *,
                    calibration: Iterable[Any] | None = None,
                    progress: bool = True, out: Any = None,
                    spotter: Callable[[fx.GraphModule], TransformerMap] | None = None
                    ) -> fx.GraphModule | Any:
    """``plan`` applied to a copy of ``gm`` (module docstring).

    Args:
        gm: a float graph from ``lowbit.capture`` (static shapes where a linear is pruned
            whole); not modified.
        plan: a ``lowbit.search.PrecisionPlan`` over ``gm``'s linears (linears it does not list
            stay float).
        calibration: batches as ``gm`` takes them: the ranges of "int8" inputs (required
            when the plan has any); for a plan naming no inputs, int8 blocks become W8A8.
        progress: report BCQ fits and calibration on stderr.
        out: ONNX inputs only: where to write the result (atomically).
        spotter: FX only: reads the ``TransformerMap`` the plan's linears are matched against
            from the graph being rewritten (None: ``lowbit.find_transformer``), for graphs the
            spotter does not read as wanted (``mixed_precision_latency`` times a lone linear
            as a "head").

    An ONNX model (a path, ``onnx.ModelProto`` or ``onnx_ir.Model``) goes to
    ``lowbit.onnx_apply_precision.apply_precision_onnx`` (the same steps as ONNX passes) and
    comes back as an ``onnx_ir.Model``.

    Returns the pruned, quantized GraphModule; ``meta["lowbit_pruning"]`` (heads and neurons
    kept, linears removed, parameter counts), ``meta["lowbit_precision"]`` (per block: rows,
    format, storage, the kernel that will serve it), ``meta["lowbit_pipeline"]``.

    Raises:
        ConfigError: a plan that does not fit the graph (naming the entry), a pruning the
            graph cannot take structurally (naming the node), "int8" inputs without
            ``calibration`` (naming the linears).
        CalibrationError: empty or NaN calibration batches.
    """
    if onnx_kind(gm):
        if spotter is not None:
            raise ConfigError("apply_precision(spotter=...) is for FX graphs; an ONNX model "
                              "is read by its own spotter")
        from lowbit.onnx_apply_precision import apply_precision_onnx
        return apply_precision_onnx(gm, plan, calibration=calibration, out=out,
                                    progress=progress)
    if out is not None:
        raise ConfigError("apply_precision(out=...) writes ONNX results; save an FX result "
                          "with lowbit.export_onnx or compile it")
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError(f"apply_precision takes a captured fx.GraphModule (lowbit.capture), "
                          f"got {type(gm).__name__}")
    if not isinstance(plan, PrecisionPlan):
        raise ConfigError(f"apply_precision takes a lowbit.search.PrecisionPlan "
                          f"(search_precision, PrecisionPlan.load), got {type(plan).__name__}")
    legacy = check_calibration(plan, calibration)
    pipeline = Pipeline([PruneSubgroups(plan, spotter), SplitRowBlocks(),
                         QuantizeFormats(plan.space, legacy, progress),
                         Calibrate(calibration, progress, "apply_precision"), Freeze(),
                         ConvertToQDQ()], name="apply_precision (FX)")
    out = pipeline(copy_graph(gm)).graph
    out.meta["lowbit_pipeline"] = pipeline.report
    return out
