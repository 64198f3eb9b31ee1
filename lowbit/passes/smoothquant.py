"""SmoothQuantScales, written once over a ``GraphView``: closed-form per-channel scales at
linear inputs (Xiao et al., 2023). The FX and ONNX passes of that name are this one with their
IR's insertion (``lowbit.passes.fx.smoothquant``, ``lowbit.passes.onnx.smoothquant``); each
calibrates in its own way (``channel_absmax``: FX runs the GraphModule, ONNX the caller's
``runner``) at the positions ``positions`` lists.

For a tensor ``y`` (last axis C) read by linears W_1..W_n, with calibrated per-channel
``max|y_j|`` and the weights' per-input-channel ``max_k max_o |W_k[o, j]|``::

    a_j = max|y_j|^alpha / max|W_:,j|^(1 - alpha)     (lowbit.quant.smoothing, clamped)
    y   ->  y' = (y / a) * a                          (a scale pair: fold_channel_scales.py)

The pair is the identity up to float rounding; ``FoldChannelScales`` then folds ``1/a`` into
the producer and ``a`` into the consumers, so ``Q`` placed at the linear input sees ``y / a``,
whose outlier channels are flattened, while the weights take the difficulty. Calibration is
separate so the pass itself stays a pure graph rewrite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from lowbit.errors import CalibrationError
from lowbit.passes.fold_channel_scales import (
    is_scale,
    norms_by_node,
    producer_of,
    producer_params_reason,
    shared_reason,
    unquant,
)
from lowbit.passes.infra import Pass
from lowbit.passes.reports import DEFAULT_ROLES, PRODUCER_HINTS, ScaleReport
from lowbit.passes.spot import find_transformer
from lowbit.passes.view import GraphView, view_of
from lowbit.quant.smoothing import check_options, smoothquant_scale

__all__ = ["SmoothQuantScales", "positions", "smooth_and_fold"]


def positions(view: GraphView, roles: Iterable[str]) -> list[tuple[Any, list]]:
    """(y, [(role, LinearRef)]) per tensor read by linears of ``roles``, in graph order of the
    linears; ``y`` is the activation operand before any activation quantizer (FX fake-quant)."""
    roles = tuple(roles)
    groups: dict[Any, list] = {}
    for role, ref in find_transformer(view.graph).linears():
        if role in roles:
            groups.setdefault(unquant(view, view.linear_input(ref)), []).append((role, ref))
    return sorted(groups.items(), key=lambda g: min(view.order(r.node) for _, r in g[1]))


def _is_scale_op(view: GraphView, node: Any, *ops: str) -> bool:
    ins = view.inputs(node) if node is not None and view.op(node) in ops else []
    return len(ins) == 2 and is_scale(view, ins[1])


def _scaled(view: GraphView, y: Any) -> bool:
    """``y`` is a scale op's output, or already feeds one."""
    return _is_scale_op(view, view.producer(y), "mul", "div") or any(
        _is_scale_op(view, u, "div") for u in view.users(y))


@dataclasses.dataclass(frozen=True)
class SmoothQuantScales(Pass):
    """Insert SmoothQuant scale pairs at the inputs of the linears of ``roles`` (the IR twins
    add ``_insert`` and ``_finish``).

    Foldable (pair inserted): a tensor read only by linears whose producer absorbs 1/a
    exactly: a norm with a weight (pre-LN: attn_norm -> q/k/v, ffn_norm -> up/gate) or a
    linear. Refused, with the reason in ``ScaleReport.refused``: post-LN norm outputs (the
    residual stream also reads them, so 1/a would change it: all of BERT's norm positions),
    the FFN-out input after a non-linear activation, the o input after the attention core
    (exact per channel through softmax(.)V in principle, not handled here), a tensor also
    read by other ops (linears outside ``roles`` too), tied, shared or already quantized
    weights, producer parameters shared outside the producer (exporters dedup equal
    initializers, e.g. every all-ones norm gain), missing calibration.
    ``explicit=True`` inserts the pair at producer-refused positions too (listed in ``kept``);
    a partial fold (``FoldChannelScales(partial=True)``) then keeps ``y / a`` as an explicit
    op. ``scales`` (by first consumer name) replaces the closed form where given (Quadapter's
    trained scales). Positions already carrying a pair are skipped (a second run reports no
    change). ``done`` lists every position that got a pair.
    """

    in_place = True
    calibrate_with: ClassVar[str] = "channel_absmax"   # named by a bad ``absmax``

    absmax: Mapping[str, torch.Tensor] = dataclasses.field(repr=False, compare=False)
    alpha: float = 0.5
    roles: tuple[str, ...] = DEFAULT_ROLES
    explicit: bool = False
    scales: Mapping[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False,
                                                                  compare=False)

    def __post_init__(self):
        check_options(self.alpha, self.absmax, self.calibrate_with)

    def _insert(self, graph: Any, y: Any, readers: set, name: str, a: torch.Tensor) -> None:
        """Insert the pair ``(y / a) * a`` for ``readers`` of ``y`` (a: float32 [C])."""
        raise NotImplementedError

    def _finish(self, graph: Any) -> None:
        """After inserting pairs (FX: recompile)."""

    def call(self, graph: Any) -> ScaleReport:
        view = view_of(graph, type(self).__name__)
        report = ScaleReport(graph, False)
        norms = norms_by_node(view)
        for y, refs in positions(view, self.roles):
            site = "/".join(r for r, _ in refs) + f" <- {refs[0][1].name}"
            if _scaled(view, y):
                continue
            lins = {ref.node for _, ref in refs}
            users = view.users(y)
            allowed = {u for u in users if u in lins or view.is_fake_quant(u)}
            why = self._refusal(view, y, refs, [u for u in users if u not in allowed])
            if why is None:
                kind, ref, why = producer_of(view, y, norms, allowed)
                why = why or producer_params_reason(view, kind, ref)
                if kind == "other" and refs[0][0] in PRODUCER_HINTS:
                    why = f"{why}: it is {PRODUCER_HINTS[refs[0][0]]}"
                if why is not None and self.explicit:
                    report.kept.append((site, f"explicit y / a: {why}"))
                    why = None
            if why is not None:
                report.refused.append((site, why))
                continue
            self._insert(graph, y, allowed, refs[0][1].name, self._scale(view, refs))
            report.done.append(site)
            report.modified = True
        if report.modified:
            self._finish(graph)
        return report

    def _refusal(self, view: GraphView, y: Any, refs: list, others: list) -> str | None:
        if (others or view.is_graph_output(y)) and not self.explicit:
            names = ", ".join(sorted(view.name(u) for u in others) or ["a graph output"])
            stream = " (the residual stream)" if any(map(view.is_residual_add, others)) else ""
            return f"{view.value_name(y)} is also read by {names}: 1/a would change them{stream}"
        for _, ref in refs:
            if ref.name not in self.absmax:
                return f"no calibrated absmax for {ref.name} (channel_absmax)"
            ops = view.linear_operands(ref.node)
            why = ops if isinstance(ops, str) else shared_reason(view, ops[1], {ref.node})
            if why:
                return f"weight of {ref.name} cannot absorb a: {why}"
        return None

    def _scale(self, view: GraphView, refs: list) -> torch.Tensor:
        if self.scales is not None and refs[0][1].name in self.scales:   # e.g. trained ones
            return self.scales[refs[0][1].name].detach().float().clone()
        weights = [(view.param(ops[1]), ops[2]) for ops in
                   (view.linear_operands(ref.node) for _, ref in refs)]
        return smoothquant_scale(self.absmax[refs[0][1].name], weights, self.alpha)


def smooth_and_fold(graph: Any, absmax: Mapping[str, torch.Tensor], scales: type, fold: type,
                    *, alpha: float, roles: tuple[str, ...], explicit: bool) -> ScaleReport:
    """``scales`` (a SmoothQuantScales class) then ``fold`` (a FoldChannelScales class) on
    ``graph`` in place; one report: folded positions (``done``), explicit ones (``kept``) and
    every refusal with its reason."""
    if not absmax:
        raise CalibrationError("smoothquant: no linear of the given roles was found")
    sq = scales(absmax, alpha, roles, explicit)(graph)
    done = fold(partial=explicit)(graph)
    return ScaleReport(graph, sq.modified or done.modified, done.done, done.kept,
                       sq.refused + done.refused)
