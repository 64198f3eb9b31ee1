"""Which ATen ops act on the last axis channel by channel: the PEG channel-family vocabulary
(``lowbit.passes.peg_family``); these functions are ``FxView``'s ``channel_inputs``,
``order_free``, ``linear_bias`` and ``is_graph_input``.

    members     fake-quant; elementwise maps (GELU, SiLU, ``x ** s``, rsqrt, ...), eval-mode
                dropout, casts (``type_as(x, y)`` casts x and reads only y's dtype), views and
                selects that keep the last axis; add / sub / mul / div with a broadcast or
                channel-indexed operand; LayerNorm / RMSNorm over that axis (gamma, beta);
                ``embedding(E, ids)`` (its table E)
    order-free  reductions over the last axis (``mean(x, -1, keepdim)``, sum, amax, amin,
                var: the same terms in another order); dtype-only reads are no data users
"""

from __future__ import annotations

from torch import fx

from lowbit.passes.view.fx_graph import aten, is_fake_quant, shape_of, tensor_of

__all__ = ["NORMS", "channel_inputs", "is_graph_input", "linear_bias", "order_free"]

NORMS = (aten.layer_norm.default, aten.rms_norm.default)
_UNARY = frozenset({aten.gelu.default, aten.relu.default, aten.tanh.default, aten.silu.default,
                    aten.sigmoid.default, aten.neg.default, aten.abs.default,
                    aten.pow.Tensor_Scalar, aten.rsqrt.default, aten.sqrt.default})
_KEEP = frozenset({aten.dropout.default, aten.clone.default, aten.alias.default,
                   aten.detach.default, aten.contiguous.default, aten.to.dtype,
                   aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default,
                   aten.view.default, aten._unsafe_view.default, aten.reshape.default,
                   aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
                   aten.squeeze.dims})
_PICK = frozenset({aten.select.int, aten.slice.Tensor, aten.narrow.default})
_BINARY = frozenset({aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor})
_REDUCE = frozenset({aten.mean.dim, aten.sum.dim_IntList, aten.amax.default,
                     aten.amin.default, aten.var.correction})


def _last(n: object) -> object:
    s = shape_of(n)
    return s[-1] if s else None


def channel_inputs(view, node: fx.Node, c: int) -> list[fx.Node] | None:
    """The inputs of ``node`` carrying its output's C channels, if it is channel-wise."""
    if is_fake_quant(node):
        return [node.args[0]]
    if node.op != "call_function" or _last(node) != c:
        return None
    t, x = node.target, node.args[0] if node.args else None
    if t in _UNARY or t in _KEEP or t in _PICK:
        if _last(x) != c or (t is aten.dropout.default and node.args[2] is True):
            return None
        rank = len(shape_of(x) or ())
        if t in _PICK and (not rank or node.args[1] % rank == rank - 1):
            return None
        return [x]
    if t in _BINARY:
        return view.broadcast_operands([a for a in node.args[:2] if isinstance(a, fx.Node)], c)
    if t in NORMS and list(node.args[1]) == [c]:
        return [x, *(a for a in node.args[2:4] if isinstance(a, fx.Node))]
    if t is aten.embedding.default and tensor_of(view.gm, x) is not None:
        return [x]
    return None


def order_free(view, value: fx.Node, node: fx.Node) -> bool:
    """``node`` reduces ``value`` over (at least) its last axis."""
    if node.target not in _REDUCE or node.args[0] is not value or value in node.args[1:]:
        return False
    rank = len(shape_of(value) or ())
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return True                      # reduces every axis
    dims = [dims] if isinstance(dims, int) else list(dims)
    return bool(rank) and any(d % rank == rank - 1 for d in dims)


def linear_bias(view, node: fx.Node) -> list[fx.Node]:
    """The bias a linear op adds itself (``addmm(b, x, W)``, ``linear(x, W, b)``)."""
    if node.target == aten.addmm.default:
        b = node.args[0]
    else:
        b = node.args[2] if node.target == aten.linear.default and len(node.args) > 2 else None
    return [b] if isinstance(b, fx.Node) else []


def is_graph_input(view, value: fx.Node) -> bool:
    return value.op == "placeholder"
