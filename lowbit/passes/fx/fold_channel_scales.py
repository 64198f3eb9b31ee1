"""FoldChannelScales: fold explicit channel-scale pairs into the parameters around them.

SmoothQuant and Quadapter leave, at a linear input ``y`` (last axis C), a *scale pair* that
reads one parameter ``a`` (shape [C], a get_attr named ``lowbit_scale_*``)::

    y_s = y / a          (aten.div.Tensor)     the quantizer, if any, sits here: Q(y / a)
    y'  = y_s * a        (aten.mul.Tensor)     read by linears L_k(y') = y' W_k^T + b_k

Folding rewrites, exactly in floating point up to rounding (computed in float64, stored back
in the parameter's dtype; the arithmetic is ``lowbit.quant.smoothing``, shared with ONNX):

    consumers   W_k' = W_k diag(a)        ([out, in]: columns j * a_j; HF Conv1D [in, out]: rows)
    producer    LayerNorm   gamma' = gamma / a,  beta' = beta / a
                RMSNorm     w' = w / a;  Gemma's (1 + w) form: w' = (1 + w) / a - 1
                linear      W_p' = diag(1/a) W_p (output rows),  b_p' = b_p / a

then removes both nodes and the parameter ``a``. Parameter count is back to the model's.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx, nn

from lowbit.passes.fx.graph_utils import (
    CASTS,
    aten,
    data_users,
    is_fake_quant,
    is_op,
    is_transparent,
    linear_operands,
    param_names,
    shape_of,
    strip_casts,
    tensor_of,
)
from lowbit.passes.fx.spot import all_norms
from lowbit.passes.infra import Pass
from lowbit.passes.reports import SCALE_PREFIX, ScaleReport, scale_name  # re-exported
from lowbit.quant.smoothing import (
    fold_bias,
    fold_consumer_weight,
    fold_norm_param,
    fold_producer_weight,
)

__all__ = [
    "SCALE_PREFIX",
    "FoldChannelScales",
    "ScaleReport",
    "insert_scale_pair",
    "linear_weight",
    "producer_of",
    "scale_name",
    "scale_pairs",
    "shared_reason",
]

_LINEARS = (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default)


def _is_scale(node: object) -> bool:
    return (isinstance(node, fx.Node) and node.op == "get_attr"
            and str(node.target).startswith(SCALE_PREFIX))


def scale_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node | None]]:
    """(div, mul) per scale parameter; mul is None for a kept (explicit) ``y / a``."""
    out = []
    for n in gm.graph.nodes:
        if is_op(n, aten.div.Tensor) and _is_scale(n.args[1]):
            mul = next((u for u in n.users if is_op(u, aten.mul.Tensor)
                        and u.args[0] is n and u.args[1] is n.args[1]), None)
            out.append((n, mul))
    return out


def linear_weight(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, str] | None:
    """(get_attr of the weight, layout "out_in" | "in_out") of a linear node; the weight may
    sit behind casts or a weight fake-quant node."""
    w = strip_casts(node.args[linear_operands(node)[1]])
    if not isinstance(w, fx.Node) or w.op != "get_attr" or tensor_of(gm, w) is None:
        return None
    return w, "out_in" if node.target == aten.linear.default else "in_out"


def _readers(node: fx.Node) -> list[fx.Node]:
    """Consumers of ``node`` through fake-quant nodes (SmoothQuant after prepare)."""
    out = []
    for u in data_users(node):
        out.extend(_readers(u) if is_fake_quant(u) else [u])
    return out


def shared_reason(gm: fx.GraphModule, attr: fx.Node, owners: set) -> str | None:
    """Why the parameter read by ``attr`` may not be rewritten for ``owners`` alone."""
    t = tensor_of(gm, attr)
    names = param_names(gm).get(id(t), [])
    if len(names) > 1:
        return f"{attr.target} is tied ({', '.join(names)})"
    readers = [u for n in gm.graph.nodes if n.op == "get_attr" and tensor_of(gm, n) is t
               for u in _readers(n)]
    if others := sorted({u.name for u in readers if u not in owners}):
        return f"{attr.target} is also read by {', '.join(others)}"
    return None


def producer_of(gm: fx.GraphModule, y: fx.Node, norms: dict,
                allowed: set) -> tuple[str, object, str | None]:
    """(kind, ref, refusal) for the tensor ``y`` whose only readers may be ``allowed``.

    Walks back through casts and moves that keep the last axis; kind is "norm" (ref: NormRef),
    "linear" (ref: the node) or "other" (always refused). Every node on the way, and ``y``
    beyond ``allowed``, must have no other reader: 1/a in the producer would reach it too."""
    c = (shape_of(y) or (None,))[-1]
    chain = [y]
    while chain[-1] not in norms and not is_op(chain[-1], *_LINEARS) and (
            is_transparent(chain[-1]) or is_op(chain[-1], *CASTS)):
        src = chain[-1].args[0]
        if not isinstance(src, fx.Node) or (shape_of(src) or (None,))[-1] != c:
            break
        chain.append(src)
    node = chain[-1]
    if node in norms:
        kind, ref = "norm", norms[node]
    elif is_op(node, *_LINEARS) and linear_weight(gm, node):
        kind, ref = "linear", node
    else:
        return "other", node, f"producer {node.name} ({node.target}) cannot absorb 1/a"
    for i, n in enumerate(chain):
        ok = allowed if i == 0 else {chain[i - 1]}
        if extra := [u.name for u in data_users(n) if u not in ok]:
            stream = " (the residual stream)" if any("add" in e for e in extra) else ""
            return kind, ref, (f"{kind} output {n.name} is also read by {', '.join(extra)}"
                               f"{stream}: 1/a folded into the {kind} would change it")
    if kind == "norm" and ref.weight is None:
        return kind, ref, f"norm {ref.name} has no weight to absorb 1/a"
    return kind, ref, None


@dataclasses.dataclass(frozen=True)
class FoldChannelScales(Pass):
    """Fold every scale pair (module docstring). Handles LayerNorm, RMSNorm (fused or HF
    decomposed, Gemma's (1 + w)) and linear producers; nn.Linear and HF Conv1D consumers.

    Refuses, leaving the pair untouched and recording why: a consumer that is not a linear
    reading the pair as its activation, a weight shared outside the match (tied or read by
    other ops), a producer that cannot absorb 1/a (an activation, the attention core) or whose
    output has other readers (post-LN: the residual stream reads the norm output).
    ``partial=True`` folds ``a`` into the consumers anyway and keeps ``y / a`` as an explicit
    per-channel op (exact, but the runtime pays one elementwise op).
    """

    in_place = True

    partial: bool = False

    def call(self, gm: fx.GraphModule) -> ScaleReport:
        pairs = scale_pairs(gm)
        report = ScaleReport(gm, False)
        if not pairs:
            return report
        norms = all_norms(gm)
        for div, mul in pairs:
            name = str(div.args[1].target)
            if mul is None:
                report.kept.append((name, "explicit y / a (kept by an earlier partial fold)"))
                continue
            why = self._fold(gm, div, mul, norms, report)
            if why:
                report.refused.append((name, why))
        if report.modified:
            for n in list(gm.graph.nodes):
                if _is_scale(n) and not n.users:
                    gm.graph.erase_node(n)
            for name in [p for p, _ in gm.named_parameters() if p.startswith(SCALE_PREFIX)]:
                if not any(n.op == "get_attr" and n.target == name for n in gm.graph.nodes):
                    delattr(gm, name)
            gm.graph.lint()
            gm.recompile()
        return report

    def _fold(self, gm, div, mul, norms, report) -> str | None:
        attr = div.args[1]
        a = tensor_of(gm, attr).detach().double()
        consumers = _readers(mul)
        cols = []
        for lin in consumers:
            w = linear_weight(gm, lin) if is_op(lin, *_LINEARS) else None
            x = lin.args[linear_operands(lin)[0]] if w else None
            if w is None or not (x is mul or (is_fake_quant(x) and mul in _chain(x))):
                return (f"{lin.name} ({lin.target}) reads y * a but is not a linear that can "
                        f"absorb a")
            if why := shared_reason(gm, w[0], {lin}):
                return f"consumer weight {why}"
            cols.append(w)
        kind, ref, why = producer_of(gm, div.args[0], norms, {div})
        if why is None:
            why = self._producer_params(gm, kind, ref)
        if why and not self.partial:
            return why
        with torch.no_grad():
            for w, layout in cols:
                t = tensor_of(gm, w)
                t.copy_(fold_consumer_weight(t, a, layout))
            if why is None:
                self._fold_producer(gm, kind, ref, a)
        mul.replace_all_uses_with(div if why else div.args[0])
        gm.graph.erase_node(mul)
        name = str(attr.target)
        if why:
            report.kept.append((name, f"explicit y / a: {why}"))
        else:
            gm.graph.erase_node(div)
            report.done.append(name)
        report.modified = True
        return None

    def _producer_params(self, gm, kind, ref) -> str | None:
        nodes = set(ref.nodes) if kind == "norm" else {ref}
        for attr in self._producer_attrs(gm, kind, ref):
            if why := shared_reason(gm, attr, nodes):
                return f"producer parameter {why}"
        return None

    @staticmethod
    def _producer_attrs(gm, kind, ref) -> list[fx.Node]:
        if kind == "linear":
            w, _ = linear_weight(gm, ref)
            b = ref.args[0] if ref.target == aten.addmm.default else (
                ref.args[2] if len(ref.args) > 2 else None)
            return [n for n in (w, b) if isinstance(n, fx.Node)]
        out = []
        for n in ref.nodes:
            out += [a for a in n.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        return out

    def _fold_producer(self, gm, kind, ref, a) -> None:
        if kind == "linear":
            w, layout = linear_weight(gm, ref)
            for attr in self._producer_attrs(gm, kind, ref):
                t = tensor_of(gm, attr)
                t.copy_(fold_producer_weight(t, a, layout) if attr is w else fold_bias(t, a))
            return
        off = ref.weight_offset if ref.kind == "rmsnorm" else 0.0   # RMSNorm: weight only
        for attr in self._producer_attrs(gm, kind, ref):
            t = tensor_of(gm, attr)
            t.copy_(fold_norm_param(t, a, off))


def _chain(fq: fx.Node) -> list[fx.Node]:
    out, n = [], fq
    while is_fake_quant(n):
        n = n.args[0]
        out.append(n)
    return out


def insert_scale_pair(gm: fx.GraphModule, y: fx.Node, readers: set, name: str,
                      a: torch.Tensor, *, learnable: bool = False) -> str:
    """Insert ``(y / a) * a`` for ``readers`` of ``y`` with a new parameter ``a``; returns its
    name (``lowbit_scale_<name>``)."""
    base = scale_name(name)
    attr_name, i = base, 0
    while hasattr(gm, attr_name):
        i += 1
        attr_name = f"{base}_{i}"
    gm.register_parameter(attr_name, nn.Parameter(a, requires_grad=learnable))
    g = gm.graph
    with g.inserting_after(y):
        attr = g.get_attr(attr_name)
    with g.inserting_after(attr):
        div = g.call_function(torch.ops.aten.div.Tensor, (y, attr))
    with g.inserting_after(div):
        mul = g.call_function(torch.ops.aten.mul.Tensor, (div, attr))
    for n in (div, mul):
        if "val" in y.meta:
            n.meta["val"] = y.meta["val"]
    for u in readers:
        u.replace_input_with(y, mul)
    return attr_name
