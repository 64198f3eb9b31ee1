"""FoldChannelScales, written once over a ``GraphView``: fold channel-scale pairs into the
parameters around them (the FX and ONNX passes of that name are this one with their IR's
edits: ``lowbit.passes.fx.fold_channel_scales``, ``lowbit.passes.onnx.fold_channel_scales``).

SmoothQuant and Quadapter leave, at a linear input ``y`` (last axis C), a *scale pair* that
reads one parameter ``a`` of shape [C] named ``lowbit_scale_*`` (FX get_attr, ONNX
initializer)::

    y_s = y / a          (FX aten.div.Tensor, ONNX Div)   the quantizer, if any: Q(y / a)
    y'  = y_s * a        (FX aten.mul.Tensor, ONNX Mul)   read by linears L_k(y') = y' W_k + b_k

Folding rewrites, exactly in floating point up to rounding (float64, stored back in each
parameter's dtype; the arithmetic is ``lowbit.quant.smoothing``)::

    consumers   W_k' = W_k diag(a)        (input channel j times a_j, in either weight layout)
    producer    LayerNorm   gamma' = gamma / a,  beta' = beta / a
                RMSNorm     w' = w / a;  Gemma's (c + w) form: w' = (c + w) / a - c
                linear      W_p' = diag(1/a) W_p (output channels),  b_p' = b_p / a

then removes both ops and the parameter ``a``: op and parameter counts are back to the model's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from lowbit.passes.infra import Pass
from lowbit.passes.reports import SCALE_PREFIX, ScaleReport
from lowbit.passes.view import GraphView, view_of
from lowbit.quant.smoothing import (
    fold_bias,
    fold_consumer_weight,
    fold_norm_param,
    fold_producer_weight,
)

__all__ = ["FoldChannelScales", "is_scale", "norms_by_node", "producer_of",
           "producer_params_reason", "readers", "scale_pairs", "shared_reason", "unquant"]


def is_scale(view: GraphView, value: Any) -> bool:
    """``value`` is a channel-scale parameter (named ``SCALE_PREFIX...``)."""
    name = view.param_of(value)
    return name is not None and name.startswith(SCALE_PREFIX)


def scale_pairs(view: GraphView) -> list[tuple[Any, Any]]:
    """(div, mul) per scale pair, in graph order; mul is None for a kept (explicit) ``y / a``."""
    out = []
    for node in view.nodes():
        ins = view.inputs(node) if view.op(node) == "div" else []
        if len(ins) == 2 and is_scale(view, ins[1]):
            mul = next((u for u in view.users(view.out(node)) if view.op(u) == "mul"
                        and _is_pair(view.inputs(u), view.out(node), ins[1])), None)
            out.append((node, mul))
    return out


def _is_pair(ins: list, y_s: Any, scale: Any) -> bool:
    return len(ins) == 2 and ins[0] is y_s and ins[1] is scale


def unquant(view: GraphView, value: Any) -> Any:
    """``value`` before any activation quantizer (FX fake-quant) in front of it."""
    while view.is_fake_quant(p := view.producer(value)):
        value = view.inputs(p)[0]
    return value


def readers(view: GraphView, value: Any) -> list:
    """The ops reading ``value``, through activation quantizers (SmoothQuant after prepare)."""
    out = []
    for u in view.users(value):
        out.extend(readers(view, view.out(u)) if view.is_fake_quant(u) else [u])
    return out


def norms_by_node(view: GraphView) -> dict:
    """Output node -> NormRef for every norm of the graph, with or without a role."""
    return {ref.node: ref for ref, _ in view.norms()}


def shared_reason(view: GraphView, name: str, owners: Iterable) -> str | None:
    """Why the parameter ``name`` may not be rewritten for the ops ``owners`` alone."""
    if len(names := view.aliases(name)) > 1:
        return f"{name} is tied ({', '.join(names)})"
    if view.param_pinned(name):
        return f"{name} is a graph input or output"
    owners = set(owners)
    if others := sorted({view.name(u) for u in view.param_readers(name) if u not in owners}):
        return f"{name} is shared: also read by {', '.join(others)}"
    return None


def producer_of(view: GraphView, y: Any, norms: dict,
                allowed: set) -> tuple[str, Any, str | None]:
    """(kind, ref, refusal) for the tensor ``y`` whose only readers may be ``allowed``.

    Walks back through ops that keep the last axis; kind is "norm" (ref: NormRef), "linear"
    (ref: LinearRef) or "other" (ref: the node; always refused). Every value on the way, and
    ``y`` beyond ``allowed``, must have no other reader: 1/a in the producer would reach it."""
    chain = [y]
    while (p := view.producer(chain[-1])) is not None and p not in norms and (
            src := view.keeps_last_axis(p)) is not None:
        chain.append(src)
    node = view.producer(chain[-1])
    if node in norms:
        kind, ref = "norm", norms[node]
    elif node is not None and (ref := view.linear_at(node)) is not None:
        kind = "linear"
    else:
        what = view.describe(node) if node is not None else f"graph input {view.value_name(y)}"
        return "other", node, f"producer {what} cannot absorb 1/a"
    for i, v in enumerate(chain):
        ok = allowed if i == 0 else {view.producer(chain[i - 1])}
        extra = [u for u in view.users(v) if u not in ok]
        names = [view.name(u) for u in extra] + (
            ["a graph output"] if view.is_graph_output(v) else [])
        if names:
            stream = " (the residual stream)" if any(map(view.is_residual_add, extra)) else ""
            return kind, ref, (f"{kind} output {view.value_name(v)} is also read by "
                               f"{', '.join(names)}{stream}: 1/a folded into the {kind} "
                               f"would change it")
    if kind == "norm" and ref.weight is None:
        return kind, ref, f"norm {ref.name} has no weight to absorb 1/a"
    return kind, ref, None


def _producer_params(view: GraphView, kind: str, ref: Any) -> list[tuple[str, set]]:
    """(parameter, the ops allowed to read it) that the producer's fold rewrites."""
    if kind == "norm":
        owners = set(ref.nodes)
    else:
        owners = {ref.node, view.producer(view.linear_out(ref))}   # the op and its bias Add
    return [(p, owners) for p in (ref.weight, ref.bias) if p is not None]


def producer_params_reason(view: GraphView, kind: str, ref: Any) -> str | None:
    """Why the producer's parameters may not take 1/a (shared outside it), or None."""
    return next((f"producer parameter {r}" for p, owners in _producer_params(view, kind, ref)
                 if (r := shared_reason(view, p, owners))), None)


def fold_producer(view: GraphView, kind: str, ref: Any, a: Any) -> None:
    """Fold ``1/a`` into a norm's parameters or a linear's output channels."""
    for p, _ in _producer_params(view, kind, ref):
        arr = view.param(p)
        if kind == "linear":
            new = fold_producer_weight(arr, a, ref.weight_layout) if p == ref.weight else \
                fold_bias(arr, a)
        else:   # RMSNorm's weight offset (Gemma: 1 + w); a LayerNorm's beta has none
            new = fold_norm_param(arr, a, ref.weight_offset if p == ref.weight else 0.0)
        view.set_param(p, new)


@dataclasses.dataclass(frozen=True)
class FoldChannelScales(Pass):
    """Fold every scale pair (module docstring); the IR twins add ``_finish``.

    Handles norm producers (LayerNorm, RMSNorm fused or decomposed, Gemma's ``(1 + w)``) and
    linear producers (bias included); linear consumers in either weight layout.
    Refuses, leaving the pair untouched and recording why: a reader of ``y * a`` that is not a
    linear reading it as its activation, a weight shared outside the match (tied, deduplicated
    or read by other ops), an already quantized weight, a producer that cannot absorb 1/a (an
    activation, the attention core) or whose output has other readers (post-LN: the residual
    stream reads the norm output). ``partial=True`` folds ``a`` into the consumers anyway and
    keeps ``y / a`` as an explicit per-channel op (exact; the runtime pays one elementwise op).
    """

    in_place = True

    partial: bool = False

    def call(self, graph: Any) -> ScaleReport:
        view = view_of(graph, type(self).__name__)
        report = ScaleReport(graph, False)
        pairs = scale_pairs(view)
        norms = norms_by_node(view) if pairs else {}
        for div, mul in pairs:
            name = view.param_of(view.inputs(div)[1])
            if mul is None:
                report.kept.append((name, "explicit y / a (kept by an earlier partial fold)"))
            elif why := self._fold(view, div, mul, norms, report):
                report.refused.append((name, why))
        if report.modified:
            self._finish(graph, report.done)
        return report

    def _finish(self, graph: Any, folded: list[str]) -> None:
        """After folding: drop the scale parameters ``folded`` (nothing reads them now)."""
        raise NotImplementedError

    def _fold(self, view: GraphView, div: Any, mul: Any, norms: dict,
              report: ScaleReport) -> str | None:
        y, scale = view.inputs(div)
        name, out = view.param_of(scale), view.out(mul)
        a = view.param(name)
        if view.is_graph_output(out):
            return f"{view.value_name(out)} is a graph output"
        cols = []
        for lin in readers(view, out):
            ops = view.linear_operands(lin)
            if not isinstance(ops, str) and unquant(view, ops[0]) is not out:
                ops = "not its activation"
            if isinstance(ops, str):
                return f"{view.describe(lin)} reads y * a but cannot absorb a: {ops}"
            if why := shared_reason(view, ops[1], {lin}):
                return f"consumer weight {why}"
            cols.append(ops[1:])
        kind, ref, why = producer_of(view, y, norms, {div})
        if why is None:
            why = producer_params_reason(view, kind, ref)
        if why and not self.partial:
            return why
        for w, layout in cols:
            view.set_param(w, fold_consumer_weight(view.param(w), a, layout))
        if why is None:
            fold_producer(view, kind, ref, a)
        view.replace_uses(out, view.out(div) if why else y)
        view.remove(mul)
        if why:
            report.kept.append((name, f"explicit y / a: {why}"))
        else:
            view.remove(div)
            report.done.append(name)
        report.modified = True
        return None
