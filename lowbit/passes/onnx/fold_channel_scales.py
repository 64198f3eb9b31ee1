"""FoldChannelScales (ONNX): fold channel-scale pairs into the initializers around them.

The ONNX form of the FX scale pair, at a linear input ``y`` (last axis C), reads one 1-D
float initializer ``a`` of shape [C] named ``lowbit_scale_<linear>`` (the name marks it)::

    y_s = Div(y, a)          the quantizer, if any, would read this: Q(y / a)
    y'  = Mul(y_s, a)        read by MatMul(y', W) / Gemm(y', W[, b]) only

Folding, with the arithmetic of ``lowbit.quant.smoothing`` (float64, stored back in the
initializer's dtype)::

    consumers  W' = W diag(a)        MatMul [K, N] (in_out): rows j * a_j; Gemm transB=1 or a
                                     Transpose on the way ([N, K], out_in): columns j * a_j
    producer   LayerNormalization / decomposed LayerNorm   gamma' = gamma / a, beta' = beta / a
               RMSNorm (op or decomposed)  w' = w / a;  Gemma's (c + w): w' = (c + w) / a - c
               MatMul (+ bias Add) / Gemm  W_p' = diag(1/a) W_p (output channels), b_p' = b_p / a

then removes both nodes and ``a``: node and initializer counts are back to the model's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from lowbit.passes.infra import Pass
from lowbit.passes.onnx.edit import add_initializer, drop_if_unused
from lowbit.passes.onnx.graph_utils import (
    bias_add,
    const_array,
    data_users,
    is_op,
    param_of,
    shape_of,
    weight_source,
)
from lowbit.passes.onnx.match import is_residual_add, match_norm
from lowbit.passes.reports import SCALE_PREFIX, ScaleReport, scale_name
from lowbit.quant.smoothing import (
    fold_bias,
    fold_consumer_weight,
    fold_norm_param,
    fold_producer_weight,
)

__all__ = ["FoldChannelScales", "Norm", "all_norms", "insert_scale_pair", "is_scale",
           "linear_weight", "producer_of", "producer_params_reason", "scale_pairs",
           "shared_reason"]

# Ops that move data without touching the last axis (checked on the shapes) nor its values.
_KEEP_LAST = ("Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze")
_PASS_THROUGH = ("Cast", "Identity", "Transpose")   # between an initializer and its reader


@dataclasses.dataclass(eq=False)
class Norm:
    """A norm whose output node is ``out``: its parameters and every node of it."""

    kind: str
    out: ir.Node
    nodes: frozenset
    weight: ir.Value | None
    bias: ir.Value | None
    offset: float = 0.0


def all_norms(graph: ir.Graph) -> dict[ir.Node, Norm]:
    """Every norm, fused op or the decomposed forms ``match.match_norm`` reads, by output node."""
    out = {}
    for node in graph:
        rms = is_op(node, "RMSNormalization", "SimplifiedLayerNormalization")
        if rms or is_op(node, "LayerNormalization"):
            ins = list(node.inputs) + [None] * 3
            out[node] = Norm("rmsnorm" if rms else "layernorm", node, frozenset({node}),
                             param_of(ins[1]), None if rms else param_of(ins[2]))
        elif is_op(node, "Sqrt") and (m := match_norm(node)) is not None:
            out[m.out] = Norm(m.kind, m.out, frozenset(m.nodes), m.weight, m.bias, m.offset)
    return out


def is_scale(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and (value.name or "").startswith(
        SCALE_PREFIX)


def scale_pairs(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node | None]]:
    """(Div, Mul) per scale pair; Mul is None for a kept (explicit) ``y / a``."""
    out = []
    for node in graph:
        if is_op(node, "Div") and len(node.inputs) == 2 and is_scale(node.inputs[1]):
            mul = next((u for u in data_users(node.outputs[0]) if is_op(u, "Mul")
                        and list(u.inputs) == [node.outputs[0], node.inputs[1]]), None)
            out.append((node, mul))
    return out


def linear_weight(node: ir.Node) -> tuple[ir.Value, str] | str:
    """(weight initializer, layout "out_in" | "in_out") of a MatMul / Gemm, or why not."""
    if is_op(node, "Gemm") and node.attributes.get_int("transA", 0):
        return f"{node.name} is a Gemm with transA=1"
    src = weight_source(node, 1) if is_op(node, "MatMul", "Gemm") else None
    if src is None or src.value is None:
        return f"{node.name} ({node.op_type}) has no weight initializer"
    if src.quantized:
        return f"{src.value.name} is already quantized: fold channel scales before InsertQDQ"
    if len(src.value.shape) != 2:
        return f"{src.value.name} has rank {len(src.value.shape)}, not 2"
    trans_b = is_op(node, "Gemm") and bool(node.attributes.get_int("transB", 0))
    return src.value, "out_in" if src.transposed ^ trans_b else "in_out"


def _final_readers(value: ir.Value) -> list[ir.Node]:
    """Readers of an initializer, through Cast / Identity / Transpose."""
    out = []
    for u in data_users(value):
        out.extend(_final_readers(u.outputs[0]) if is_op(u, *_PASS_THROUGH) else [u])
    return out


def shared_reason(value: ir.Value, owners: set) -> str | None:
    """Why the initializer ``value`` may not be rewritten for ``owners`` alone."""
    if value.is_graph_input() or value.is_graph_output():
        return f"{value.name} is a graph input or output"
    if others := sorted({u.name for u in _final_readers(value) if u not in owners}):
        return f"{value.name} is shared: also read by {', '.join(others)}"
    return None


def _linear_at(node: ir.Node | None) -> tuple[ir.Node, ir.Value, str, ir.Value | None] | None:
    """(MatMul / Gemm, weight, layout, bias) for a linear whose output ``node`` produces."""
    bias = None
    if is_op(node, "Add") and len(node.inputs) == 2:
        mm = next((v.producer() for v in node.inputs if is_op(v.producer(), "MatMul")), None)
        w = linear_weight(mm) if mm is not None else "no MatMul"
        if isinstance(w, str) or (found := bias_add(mm, int(w[0].shape[w[1] == "in_out"])))\
                is None or found[1] is not node:
            return None
        return mm, *w, found[0]
    if not is_op(node, "MatMul", "Gemm") or isinstance(w := linear_weight(node), str):
        return None
    if is_op(node, "MatMul") and bias_add(node, int(w[0].shape[w[1] == "in_out"])):
        return None                     # y is read before the bias: not the linear's output
    if is_op(node, "Gemm") and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = param_of(node.inputs[2])
        if bias is None or len(bias.shape) != 1:
            return None
    return node, *w, bias


def producer_of(y: ir.Value, norms: dict, allowed: set) -> tuple[str, object, str | None]:
    """(kind, ref, refusal) for the tensor ``y`` whose only readers may be ``allowed``.

    Walks back through ops that keep the last axis; kind is "norm" (ref: Norm), "linear"
    (ref: ``_linear_at``'s tuple) or "other" (always refused). Every value on the way, and
    ``y`` beyond ``allowed``, must have no other reader: 1/a in the producer would reach it."""
    chain = [y]
    while (p := chain[-1].producer()) is not None and p not in norms and not _linear_at(p) \
            and is_op(p, *_KEEP_LAST):
        a, b = shape_of(p.inputs[0]), shape_of(chain[-1])
        if not (a and b and isinstance(a[-1], int) and a[-1] == b[-1]):
            break
        chain.append(p.inputs[0])
    node = chain[-1].producer()
    if node in norms:
        kind, ref = "norm", norms[node]
    elif (ref := _linear_at(node)) is not None:
        kind = "linear"
    else:
        what = f"{node.name} ({node.op_type})" if node is not None else f"graph input {y.name}"
        return "other", node, f"producer {what} cannot absorb 1/a"
    for i, v in enumerate(chain):
        ok = allowed if i == 0 else {chain[i - 1].producer()}
        extra = [u for u in data_users(v) if u not in ok]
        names = [u.name for u in extra] + (["a graph output"] if v.is_graph_output() else [])
        if names:
            stream = " (the residual stream)" if any(map(is_residual_add, extra)) else ""
            return kind, ref, (f"{kind} output {v.name} is also read by {', '.join(names)}"
                               f"{stream}: 1/a folded into the {kind} would change it")
    if kind == "norm" and ref.weight is None:
        return kind, ref, f"norm {ref.out.name} has no weight to absorb 1/a"
    return kind, ref, None


def _set(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.Tensor(array, name=value.name)


@dataclasses.dataclass(frozen=True)
class FoldChannelScales(Pass):
    """Fold every scale pair (module docstring). Handles LayerNormalization, RMSNormalization
    and the decomposed LayerNorm / RMSNorm (Gemma's ``(1 + w)`` too) and MatMul / Gemm
    producers; MatMul / Gemm consumers, weights read directly or through Transpose / Cast.

    Refuses, leaving the pair untouched and recording why: a reader of ``y * a`` that is not a
    linear reading it as its activation, a weight shared outside the match (deduplicated or
    tied initializers, read by other ops), an already quantized weight, a producer that cannot
    absorb 1/a (an activation, the attention core) or whose output has other readers (post-LN:
    the residual stream reads the norm output). ``partial=True`` folds ``a`` into the consumers
    anyway and keeps ``Div(y, a)`` as an explicit per-channel op (exact).
    """

    in_place = True

    partial: bool = False

    def call(self, model: ir.Model) -> ScaleReport:
        graph = model.graph
        report = ScaleReport(model, False)
        pairs = scale_pairs(graph)
        norms = all_norms(graph) if pairs else {}
        for div, mul in pairs:
            name = div.inputs[1].name
            if mul is None:
                report.kept.append((name, "explicit y / a (kept by an earlier partial fold)"))
            elif why := self._fold(graph, div, mul, norms, report):
                report.refused.append((name, why))
        return report

    def _fold(self, graph, div, mul, norms, report) -> str | None:
        scale = div.inputs[1]
        a = const_array(scale)
        cols = []
        if mul.outputs[0].is_graph_output():
            return f"{mul.outputs[0].name} is a graph output"
        for lin in data_users(mul.outputs[0]):
            w = linear_weight(lin) if lin.inputs[0] is mul.outputs[0] else "not its activation"
            if isinstance(w, str):
                return f"{lin.name} ({lin.op_type}) reads y * a but cannot absorb a: {w}"
            if why := shared_reason(w[0], {lin}):
                return f"consumer weight {why}"
            cols.append(w)
        kind, ref, why = producer_of(div.inputs[0], norms, {div})
        if why is None:
            why = producer_params_reason(kind, ref)
        if why and not self.partial:
            return why
        for w, layout in cols:
            _set(w, fold_consumer_weight(const_array(w), a, layout))
        if why is None:
            for v, _ in _producer_params(kind, ref):
                arr = const_array(v)
                if kind == "norm":
                    off = ref.offset if v is ref.weight else 0.0
                    _set(v, fold_norm_param(arr, a, off))
                else:
                    _set(v, fold_producer_weight(arr, a, ref[2]) if v is ref[1] else
                         fold_bias(arr, a))
        mul.outputs[0].replace_all_uses_with(div.outputs[0] if why else div.inputs[0])
        graph.remove(mul, safe=True)
        if why:
            report.kept.append((scale.name, f"explicit y / a: {why}"))
        else:
            graph.remove(div, safe=True)
            drop_if_unused(graph, scale)
            report.done.append(scale.name)
        report.modified = True
        return None


def _producer_params(kind: str, ref) -> list[tuple[ir.Value, set]]:
    """(initializer, the nodes allowed to read it) the producer's fold rewrites."""
    if kind == "norm":
        return [(v, set(ref.nodes)) for v in (ref.weight, ref.bias) if v is not None]
    node, w, _, bias = ref
    owners = {node} | {u for u in data_users(node.outputs[0]) if bias is not None}
    return [(v, owners) for v in (w, bias) if v is not None]


def producer_params_reason(kind: str, ref) -> str | None:
    """Why the producer's parameters may not take 1/a (shared outside it), or None."""
    return next((f"producer parameter {r}" for v, owners in _producer_params(kind, ref)
                 if (r := shared_reason(v, owners))), None)


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
