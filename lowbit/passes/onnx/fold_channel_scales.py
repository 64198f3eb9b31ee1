"""FoldChannelScales (ONNX): fold channel-scale pairs into the initializers around them.

The algorithm, its math and its refusals are written once over the graph view
(``lowbit.passes.fold_channel_scales``); here is what only ONNX has. The pair, at a linear
input ``y`` (last axis C), reads one 1-D float initializer ``a`` of shape [C] named
``lowbit_scale_<linear>`` (the name marks it)::

    y_s = Div(y, a)          the quantizer, if any, would read this: Q(y / a)
    y'  = Mul(y_s, a)        read by MatMul(y', W) / Gemm(y', W[, b]) only

Consumers: MatMul [K, N] (in_out: rows j * a_j); Gemm transB=1 or a Transpose on the way
([N, K], out_in: columns j * a_j). Producers: LayerNormalization / decomposed LayerNorm,
RMSNorm (op or decomposed; Gemma's ``(c + w)``), MatMul (+ bias Add) / Gemm. The walk back to
the producer crosses Reshape / Cast / Identity / (Un)Squeeze when the shapes show the last
axis is kept. Folding stores each initializer back in its dtype and drops ``a``: node and
initializer counts are back to the model's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from lowbit.passes import fold_channel_scales as _fold
from lowbit.passes.onnx.edit import add_initializer, drop_if_unused
from lowbit.passes.reports import SCALE_PREFIX, scale_name
from lowbit.passes.view.onnx import OnnxView, linear_weight  # linear_weight: re-exported

__all__ = ["FoldChannelScales", "insert_scale_pair", "is_scale", "linear_weight",
           "scale_pairs", "shared_reason"]


def is_scale(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and (value.name or "").startswith(
        SCALE_PREFIX)


def scale_pairs(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node | None]]:
    """(Div, Mul) per scale pair; Mul is None for a kept (explicit) ``y / a``."""
    return _fold.scale_pairs(OnnxView(graph))


def shared_reason(value: ir.Value, owners: set) -> str | None:
    """Why the initializer ``value`` may not be rewritten for ``owners`` alone."""
    if not value.is_initializer():
        return f"{value.name} is not an initializer"
    return _fold.shared_reason(OnnxView(value.graph), value.name, owners)


@dataclasses.dataclass(frozen=True)
class FoldChannelScales(_fold.FoldChannelScales):
    """Fold every scale pair of an onnx_ir model (``lowbit.passes.fold_channel_scales``: what
    it handles and refuses). ``partial=True`` keeps ``Div(y, a)`` explicit where the producer
    cannot take ``1/a``."""

    in_place = True

    def _finish(self, model: ir.Model, folded: list[str]) -> None:
        for name in folded:
            drop_if_unused(model.graph, model.graph.initializers.get(name))


def insert_scale_pair(graph: ir.Graph, y: ir.Value, readers: set, name: str,
                      a: np.ndarray) -> str:
    """Insert ``Mul(Div(y, a), a)`` for ``readers`` of ``y`` with a new initializer ``a``
    (``lowbit_scale_<name>``, made unique), before the first reader; returns its name."""
    dtype = y.dtype if y.dtype is not None and y.dtype.is_floating_point() else \
        ir.DataType.FLOAT
    scale = add_initializer(graph, scale_name(name), np.asarray(a, dtype=dtype.numpy()), dtype)
    div = ir.Node("", "Div", [y, scale], name=f"{scale.name}/div")
    mul = ir.Node("", "Mul", [div.outputs[0], scale], name=f"{scale.name}/mul")
    for node, suffix in ((div, "div"), (mul, "mul")):
        out = node.outputs[0]
        out.name, out.type = f"{scale.name}_{suffix}", y.type
        out.shape = ir.Shape(y.shape) if y.shape is not None else None
    graph.insert_before(next(n for n in graph if n in readers), [div, mul])
    for u in readers:
        for i, v in enumerate(u.inputs):
            if v is y:
                u.replace_input_with(i, mul.outputs[0])
    return scale.name
