"""FxView: ``GraphView`` over a torch.fx GraphModule made by ``lowbit.capture``.

A node is its own value. Recognisers, in ATen ops:

* linear   ``aten.linear(x, W[out,in], b)``; ``aten.addmm(b, x, W[in,out])`` (HF Conv1D);
  ``aten.mm/matmul(x, W[in,out])`` against a parameter (2-D, not a buffer).
* norm     ``aten.layer_norm``, ``aten.rms_norm`` and the decomposed RMSNorm of HF Llama/Gemma
  ``y = x * rsqrt(mean(x^2, -1, keepdim) + eps) * w`` (Gemma: ``* (1 + w)``,
  ``weight_offset=1.0``); its output is the weight product, trailing casts are not part of it.
* attention ``aten.scaled_dot_product_attention`` (core_kind "sdpa"); nn.MultiheadAttention
  lowers to it or to bmm-softmax-bmm under torch.export, so "mha" is never produced.
* embedding ``aten.embedding`` of a parameter; the index kind is read back through moves,
  slices and ``+ c`` offsets: a graph input, ``arange`` / ``cumsum`` / a non-constant buffer
  (positions), anything else (token types).

Names: a parameter's dotted name; for a tied weight the alias owned by the module running the
op (``fx_graph.param_name``); a weightless norm is named after its module. The helpers are
those of ``lowbit.passes.view.fx_graph`` (also importable as ``lowbit.passes.fx.graph_utils``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx

from lowbit.passes.patterns import EmbeddingRef, LinearRef, NormRef
from lowbit.passes.view import fx_channels
from lowbit.passes.view.base import Fused, GraphView
from lowbit.passes.view.fx_graph import (
    CASTS,
    act_kind,
    ancestors,
    aten,
    back,
    consumers,
    data_input,
    data_users,
    descendants,
    is_fake_quant,
    is_op,
    is_residual_add,
    is_scalar_scale,
    is_split,
    is_transparent,
    linear_input,
    linear_operands,
    match_rmsnorm,
    numel,
    param_name,
    param_names,
    rope_source,
    shape_of,
    split_source,
    strip_casts,
    strip_suffix,
    tensor_of,
)

__all__ = ["LINEARS", "FxView", "all_norms", "linear_weight"]

_CANON = {
    aten.matmul.default: "matmul", aten.bmm.default: "matmul",
    aten.softmax.int: "softmax", aten._softmax.default: "softmax",
    aten._safe_softmax.default: "softmax",
    aten.add.Tensor: "add", aten.sub.Tensor: "sub", aten.mul.Tensor: "mul",
    aten.div.Tensor: "div", aten.where.self: "where", aten.masked_fill.Scalar: "masked_fill",
    aten.view.default: "reshape", aten.reshape.default: "reshape",
}
_ARANGE = (aten.arange.default, aten.arange.start, aten.arange.start_step)
_POSITION_MATH = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor)


def all_norms(gm: fx.GraphModule) -> dict:
    """Output node -> NormRef for every norm in the graph, with or without a role (a scale
    pair between a norm and its linears hides the norm's role from spotting)."""
    return {ref.node: ref for ref, _ in FxView(gm).norms()}


class FxView(GraphView):
    """``GraphView`` over a GraphModule (module docstring)."""

    ir = "fx"

    def __init__(self, gm: fx.GraphModule):
        self.graph = self.gm = gm
        self._aliases = param_names(gm)     # id(tensor) -> every dotted name
        self._claimed: set = set()          # get_attr nodes read by recognised ops
        self._order: dict = {}

    # ---- navigation --------------------------------------------------------------------------
    def nodes(self):
        return self.gm.graph.nodes

    def order(self, node):
        if node is None:
            return -1
        if node not in self._order:
            self._order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        return self._order.get(node, -1)

    def name(self, node):
        return node.name

    def op(self, node):
        ok = isinstance(node, fx.Node) and node.op == "call_function"
        return _CANON.get(node.target) if ok else None

    def producer(self, value):
        return value if isinstance(value, fx.Node) else None

    def out(self, node):
        return node

    def inputs(self, node):
        return [a for a in node.args if isinstance(a, fx.Node)]

    def users(self, value):
        return data_users(value)

    def consumers(self, value):
        return consumers(value)

    def descendants(self, value):
        return descendants(value)

    def ancestors(self, value, floor, stop):
        return ancestors(value, floor, stop)

    def back(self, value, *, scales=False):
        return back(value, scales=scales)

    def is_transparent(self, node):
        return is_transparent(node)

    def is_scalar_scale(self, node):
        return is_scalar_scale(node)

    def data_input(self, node):
        return data_input(node)

    def shape(self, value):
        return shape_of(value)

    def is_graph_output(self, value):
        return any(u.op == "output" for u in value.users)

    # ---- recognisers -------------------------------------------------------------------------
    def _param(self, attr: object, user: fx.Node) -> str | None:
        """The name of the parameter ``attr`` reads (None for activations and buffers);
        claims it (``unrecognised_params`` leaves it out)."""
        if id(tensor_of(self.gm, attr)) not in self._aliases:
            return None
        self._claimed.add(strip_casts(attr))
        return param_name(self.gm, attr, user, self._aliases)

    def linear(self, node):
        if is_op(node, aten.linear.default):
            w, b, layout = node.args[1], (node.args[2:3] or [None])[0], "out_in"
        elif is_op(node, aten.addmm.default):
            w, b, layout = node.args[2], node.args[0], "in_out"
        elif is_op(node, aten.mm.default, aten.matmul.default):
            w, b, layout = node.args[1], None, "in_out"
        else:
            return None
        t = tensor_of(self.gm, w)
        if t is None or t.dim() != 2 or (weight := self._param(w, node)) is None:
            return None
        rows, cols = t.shape
        fan_in, fan_out = (cols, rows) if layout == "out_in" else (rows, cols)
        return LinearRef(node, strip_suffix(weight), weight, self._param(b, node), int(fan_in),
                         int(fan_out), layout)

    def linear_input(self, ref):
        return linear_input(ref.node)

    def linear_out(self, ref):
        return ref.node

    def norm(self, node):
        if is_op(node, aten.layer_norm.default, aten.rms_norm.default):
            kind = "layernorm" if node.target == aten.layer_norm.default else "rmsnorm"
            args = list(node.args) + [None] * 4
            w = self._param(args[2], node)
            b = self._param(args[3], node) if kind == "layernorm" else None
            return NormRef(node, _norm_name(node, w), kind, w, b, int(args[1][-1]),
                           (node,)), node.args[0]
        if not is_op(node, aten.rsqrt.default) or (m := match_rmsnorm(node)) is None:
            return None
        weight = self._param(m.weight, m.out)
        dim = int(tensor_of(self.gm, m.weight).numel()) if weight else int(shape_of(m.x)[-1])
        return NormRef(m.out, _norm_name(m.out, weight), "rmsnorm", weight, None, dim,
                       m.nodes, m.offset), m.x

    def fused_attention(self, node):
        if is_op(node, aten.scaled_dot_product_attention.default):
            return Fused("sdpa", *node.args[:3], node)
        return None

    def embedding(self, node):
        t = tensor_of(self.gm, node.args[0]) if is_op(node, aten.embedding.default) else None
        if t is None or (weight := self._param(node.args[0], node)) is None:
            return None
        role = self._index_kind(node.args[1])
        return EmbeddingRef(node, strip_suffix(weight), weight, role, *map(int, t.shape))

    def index_input(self, ref):
        return str(_index_root(ref.node.args[1]).target)

    def _index_kind(self, idx: object) -> str:
        root = _index_root(idx)
        if getattr(root, "op", None) == "placeholder":
            return "input"
        if is_op(root, *_ARANGE) or _counts_positions(root):
            return "embedding.position"
        buf = tensor_of(self.gm, root)
        if buf is not None and buf.numel() > 1 and bool((buf != buf.flatten()[0]).any()):
            return "embedding.position"
        return "embedding.token_type"

    def split_source(self, node):
        return split_source(node) if is_split(node) else None

    def part_width(self, ref, split, part):
        size, whole = numel(part), numel(ref.node)
        return size * ref.out_features // whole if size and whole else None

    def head_dim(self, core, q, width, reshape):
        shape = shape_of(q)
        return shape[-1] if shape else None

    def rope_source(self, value):
        return rope_source(value)

    def is_residual_add(self, node):
        return is_residual_add(node)

    def act_kind(self, nodes):
        return act_kind(nodes)

    def unrecognised_params(self):
        out = []
        for node in self.gm.graph.nodes:
            t = tensor_of(self.gm, node) if node.op == "get_attr" else None
            users = data_users(node) if t is not None and id(t) in self._aliases else []
            if users and node not in self._claimed:
                ops = ", ".join(sorted({str(u.target) for u in users}))
                why = f"parameter {node.target} read by {ops}, which spotting does not recognise"
                out.append((node.name, why))
        return out

    # ---- parameters --------------------------------------------------------------------------
    def param(self, name):
        obj: object = self.gm
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def set_param(self, name, array):
        t = self.param(name)
        with torch.no_grad():
            t.copy_(torch.as_tensor(array).to(t.dtype))

    def param_of(self, value):
        v = strip_casts(value)
        return str(v.target) if isinstance(v, fx.Node) and v.op == "get_attr" else None

    def param_readers(self, name):
        t = self.param(name)
        out: dict = {}
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and tensor_of(self.gm, n) is t:
                out.update(dict.fromkeys(_readers(n)))
        return list(out)

    def aliases(self, name):
        return list(self._aliases.get(id(self.param(name)), [name]))

    # ---- small rewrites ----------------------------------------------------------------------
    def replace_uses(self, old, new, readers: Iterable | None = None):
        if readers is None:
            old.replace_all_uses_with(new)
            return
        for u in readers:
            u.replace_input_with(old, new)

    def remove(self, node):
        self.gm.graph.erase_node(node)

    # ---- channel scales ----------------------------------------------------------------------
    def describe(self, node):
        return f"{node.name} ({node.target})"

    def value_name(self, value):
        return value.name

    def is_fake_quant(self, node):
        return is_fake_quant(node)

    def keeps_last_axis(self, node):
        if not (is_transparent(node) or is_op(node, *CASTS)):
            return None
        src = node.args[0]
        last = (shape_of(node) or (None,))[-1]
        return src if isinstance(src, fx.Node) and (shape_of(src) or (None,))[-1] == last \
            else None

    def linear_operands(self, node):
        if not is_op(node, *LINEARS):
            return "not a linear"
        if (w := linear_weight(self.gm, node)) is None:
            return "its weight is not a parameter"
        return linear_input(node), str(w[0].target), w[1]

    def linear_at(self, node):
        ref = self.linear(node) if is_op(node, *LINEARS) else None
        if not isinstance(ref, LinearRef) or linear_weight(self.gm, node) is None:
            return None
        bias = node.args[0] if node.target == aten.addmm.default else (
            node.args[2] if node.target == aten.linear.default and len(node.args) > 2 else None)
        return ref if bias is None or ref.bias is not None else None

    def param_pinned(self, name):
        return False

    # ---- channel families (the ATen op vocabulary: ``fx_channels``) ------------------------------
    channel_inputs = fx_channels.channel_inputs
    order_free = fx_channels.order_free
    linear_bias = fx_channels.linear_bias
    is_graph_input = fx_channels.is_graph_input


LINEARS = (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default)


def linear_weight(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, str] | None:
    """(get_attr of the weight, layout "out_in" | "in_out") of a linear node; the weight may
    sit behind casts or a weight fake-quant node."""
    w = strip_casts(node.args[linear_operands(node)[1]])
    if not isinstance(w, fx.Node) or w.op != "get_attr" or tensor_of(gm, w) is None:
        return None
    return w, "out_in" if node.target == aten.linear.default else "in_out"


def _readers(node: fx.Node) -> list[fx.Node]:
    """Data users of ``node`` through dtype casts and fake-quant nodes."""
    out = []
    for u in data_users(node):
        through = is_fake_quant(u) or is_op(u, *CASTS)
        out.extend(_readers(u) if through else [u])
    return out


def _norm_name(node: fx.Node, weight: str | None) -> str:
    if weight is not None:
        return strip_suffix(weight)
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    return stack[-1][0] if stack else node.name


def _index_root(idx: object) -> object:
    """Back from an embedding index through moves, slices and ``+ c`` offsets."""
    while is_transparent(idx) or is_split(idx) or (
            is_op(idx, aten.add.Tensor, aten.sub.Tensor)
            and not isinstance(idx.args[1], fx.Node)):
        idx = idx.args[0]
    return idx


def _counts_positions(node: object) -> bool:
    """RoBERTa-style position ids: ``cumsum(mask) * mask + pad`` (first operands back)."""
    while is_op(node, *_POSITION_MATH) or is_transparent(node):
        node = node.args[0]
    return is_op(node, aten.cumsum.default)
