"""Which ONNX ops act on the last axis channel by channel: the PEG channel-family vocabulary
(``lowbit.passes.peg_family``); these functions are ``OnnxView``'s ``channel_inputs``,
``order_free``, ``linear_bias`` and ``is_graph_input``.

    members     elementwise unary ops (Gelu, Erf, Tanh, Relu, Sigmoid, Cast, Dropout, ...),
                binary ops whose other operand broadcasts on the last axis,
                LayerNormalization / RMSNormalization over it (gamma, beta: initializers),
                Reshape / (Un)Squeeze / Expand / Flatten / Transpose keeping it, Gather / Slice
                off it (``Gather(E, ids)`` on axis 0: an embedding, its table E)
    order-free  Reduce* over the last axis alone with keepdims (decomposed norms), the
                target-type input of CastLike
"""

from __future__ import annotations

import onnx_ir as ir

from lowbit.passes.view.onnx_graph import const_array, is_op, shape_of

__all__ = ["channel_inputs", "is_graph_input", "linear_bias", "order_free"]

_UNARY = frozenset({"Gelu", "Erf", "Tanh", "Relu", "Sigmoid", "Neg", "Cast", "Identity",
                    "Dropout", "Sqrt", "Reciprocal", "Exp", "Abs", "Softplus", "HardSigmoid",
                    "CastLike"})                # CastLike reads its 2nd input's dtype only
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
_NORMS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"})
_KEEP = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Expand", "Flatten"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2",
                     "ReduceSumSquare", "ReduceL1"})


def _last(v: ir.Value | None):
    s = shape_of(v)
    return s[-1] if s else None


def _rank(v: ir.Value | None) -> int | None:
    s = shape_of(v)
    return None if s is None else len(s)


def _axes(node: ir.Node, index: int) -> list[int] | None:
    """The constant ``axes`` of a Reduce / Slice (attribute or input ``index``), or None."""
    if (a := node.attributes.get("axes")) is not None:
        return list(a.as_ints())
    if len(node.inputs) > index and node.inputs[index] is not None:
        arr = const_array(node.inputs[index])
        return None if arr is None else [int(x) for x in arr.reshape(-1)]
    return None


def _keeps_last(node: ir.Node, rank: int) -> bool:
    """A move or pick (Transpose, Gather, Slice, Reshape, ...) leaves the last axis whole."""
    t = node.op_type
    if t == "Transpose":
        return list(node.attributes.get_ints("perm", list(range(rank))[::-1]))[-1] == rank - 1
    if t == "Gather":
        return node.attributes.get_int("axis", 0) % rank != rank - 1
    if t == "Slice":
        axes = _axes(node, 3)
        return axes is not None and rank - 1 not in [a % rank for a in axes]
    return True


def channel_inputs(view, node: ir.Node, c: int) -> list[ir.Value] | None:
    """The inputs of ``node`` carrying its output's C channels, if it is channel-wise."""
    if not node.outputs or _last(node.outputs[0]) != c or node.domain not in ("", "ai.onnx"):
        return None
    t, x = node.op_type, node.inputs[0] if node.inputs else None
    rank = _rank(x)
    if t in _UNARY:
        return [x] if _last(x) == c else None
    if t in _BINARY and len(node.inputs) == 2:
        return view.broadcast_operands(list(node.inputs), c)
    if t in _NORMS:
        axis = node.attributes.get_int("axis", -1)
        params = [a for a in node.inputs[1:3] if a is not None]
        if rank and axis % rank == rank - 1 and all(
                a.is_initializer() and _last(a) == c for a in params):
            return [x, *params]
        return None
    if t in _KEEP or is_op(node, "Transpose", "Gather", "Slice"):
        if _last(x) != c or rank is None or not _keeps_last(node, rank):
            return None
        if t == "Gather" and _last(node.inputs[1]) == c:
            return None
        return [x]
    return None


def order_free(view, value: ir.Value, node: ir.Node) -> bool:
    """``node`` reduces ``value`` over its last axis alone, keeping dims, or reads only its
    dtype (CastLike's target)."""
    if is_op(node, "CastLike"):
        return node.inputs[0] is not value
    rank = _rank(value)
    if not is_op(node, *_REDUCE) or rank is None or not node.attributes.get_int("keepdims", 1):
        return False
    axes = _axes(node, 1)
    return axes is not None and [a % rank for a in axes] == [rank - 1]


def linear_bias(view, node: ir.Node) -> list[ir.Value]:
    """The bias a Gemm adds itself (a MatMul's bias is a separate Add)."""
    b = node.inputs[2] if is_op(node, "Gemm") and len(node.inputs) > 2 else None
    return [b] if b is not None else []


def is_graph_input(view, value: ir.Value) -> bool:
    return value.is_graph_input()
