"""SmoothQuantScales (ONNX): closed-form per-channel scales at linear inputs (Xiao et al., 2023).

The ONNX twin of ``lowbit.passes.fx.smoothquant``, with the same numerics
(``lowbit.quant.smoothing``). For a tensor ``y`` (last axis C) read by MatMul / Gemm linears
W_1..W_n, with calibrated per-channel ``max|y_j|`` and the weights' per-input-channel
``max_k max_o |W_k[o, j]|``::

    a_j = max|y_j|^alpha / max|W_:,j|^(1 - alpha)      (clamped, see lowbit.quant.smoothing)
    y   ->  Mul(Div(y, a), a)                          a: initializer lowbit_scale_<linear>

``FoldChannelScales`` (``fold_channel_scales.py``, which documents the pair) then folds ``1/a``
into the producer and ``a`` into the consumers. Calibration is separate (``channel_absmax``:
runs by the caller's ``runner``, e.g. ``OrtRunner``, feeding the shared per-channel MinMax
observers, as ``calibrate`` does), so the pass itself is a pure graph rewrite; ``smoothquant``
does all three in one call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import onnx_ir as ir
import torch

from lowbit.config import MinMax
from lowbit.errors import CalibrationError
from lowbit.passes.infra import Pass
from lowbit.passes.onnx.calibrate import RunnerFactory, _feed, _with_outputs
from lowbit.passes.onnx.fold_channel_scales import (
    FoldChannelScales,
    all_norms,
    insert_scale_pair,
    is_scale,
    linear_weight,
    producer_of,
    producer_params_reason,
    shared_reason,
)
from lowbit.passes.onnx.graph_utils import const_array, data_users, is_op, order
from lowbit.passes.onnx.match import is_residual_add
from lowbit.passes.onnx.spot import find_transformer
from lowbit.passes.reports import DEFAULT_ROLES, PRODUCER_HINTS, ScaleReport
from lowbit.quant.observers import make_observer
from lowbit.quant.smoothing import absmax_from_range, check_options, smoothquant_scale

__all__ = ["SmoothQuantScales", "channel_absmax", "smoothquant"]


def _positions(model: ir.Model, roles: Iterable[str]) -> list[tuple[ir.Value, list]]:
    """(y, [(role, LinearRef)]) per tensor read by linears of ``roles``, in graph order."""
    groups: dict[ir.Value, list] = {}
    for role, ref in find_transformer(model).linears():
        if role in roles:
            groups.setdefault(ref.node.inputs[0], []).append((role, ref))
    return sorted(groups.items(), key=lambda g: min(order(r.node) for _, r in g[1]))


def channel_absmax(model: ir.Model, batches: Iterable[Any], roles: Iterable[str] = DEFAULT_ROLES,
                   *, runner: RunnerFactory, threads: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Per-channel max |x| (last axis) at the input of every linear of ``roles``, keyed by the
    linear's name (as FX names it). Runs the model with ``runner`` (``OrtRunner``) with the
    inputs as extra outputs (``calibrate``'s machinery; the model is not changed); batches and
    ``runner`` as for ``calibrate``."""
    groups = _positions(model, tuple(roles))
    obs = {y: make_observer(MinMax(), refs[0][1].name + ":input", qmin=0, qmax=255,
                            symmetric=False, per_channel=True) for y, refs in groups}
    count = 0
    with _with_outputs(model, list(obs)) as src:
        session = runner(src, threads, optimization="basic")
        index = {name: i for i, name in enumerate(session.output_names)}
        ignored: set = set()
        for batch in batches:
            outs = session.run(_feed(session, batch, ignored))
            for y, o in obs.items():
                o.update(torch.from_numpy(outs[index[y.name]]))
            del outs
            count += 1
    if count == 0 and obs:
        raise CalibrationError("channel_absmax: calibration data is empty: give at least one "
                               "batch")
    return {ref.name: absmax_from_range(*obs[y].range()) for y, refs in groups for _, ref in refs}


def _is_scale_op(node: ir.Node | None, op: str) -> bool:
    return is_op(node, op) and len(node.inputs) == 2 and is_scale(node.inputs[1])


def _scaled(y: ir.Value) -> bool:
    """``y`` is a scale op's output, or already feeds one."""
    return _is_scale_op(y.producer(), "Mul") or _is_scale_op(y.producer(), "Div") or any(
        _is_scale_op(u, "Div") for u in data_users(y))


@dataclasses.dataclass(frozen=True)
class SmoothQuantScales(Pass):
    """Insert SmoothQuant scale pairs at the inputs of the linears of ``roles`` (the FX pass's
    options, positions, refusals and report, over onnx_ir models).

    Foldable (pair inserted): a tensor read only by linears whose producer absorbs 1/a
    exactly: a norm with a weight (pre-LN: attn_norm -> q/k/v, ffn_norm -> up/gate) or a
    linear. Refused, with the reason in ``ScaleReport.refused``: post-LN norm outputs (the
    residual stream also reads them: all of BERT's norm positions), the FFN-out input after
    a non-linear activation, the o input after the attention core, a tensor also read by
    other ops, shared (deduplicated or tied) or already quantized weights, producer
    parameters shared outside the producer (checked here, unlike FX, which leaves that to the
    fold: exporters dedup equal initializers, e.g. every all-ones norm gain), missing
    calibration. ``explicit=True`` inserts the pair at producer-refused positions too (listed
    in ``kept``; note that ONNX spotting does not see through a kept ``Div(y, a)``).
    ``scales`` (by first consumer name) replaces the closed form where given. Positions
    already carrying a pair are skipped (a second run reports no change).
    """

    in_place = True

    absmax: Mapping[str, torch.Tensor] = dataclasses.field(repr=False, compare=False)
    alpha: float = 0.5
    roles: tuple[str, ...] = DEFAULT_ROLES
    explicit: bool = False
    scales: Mapping[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False,
                                                                  compare=False)

    def __post_init__(self):
        check_options(self.alpha, self.absmax,
                      "lowbit.passes.onnx.smoothquant.channel_absmax")

    def call(self, model: ir.Model) -> ScaleReport:
        report = ScaleReport(model, False)
        norms = all_norms(model.graph)
        for y, refs in _positions(model, self.roles):
            site = "/".join(r for r, _ in refs) + f" <- {refs[0][1].name}"
            if _scaled(y):
                continue
            lins = {ref.node for _, ref in refs}
            why = self._refusal(y, refs, [u for u in data_users(y) if u not in lins])
            if why is None:
                kind, ref, why = producer_of(y, norms, lins)
                why = why or producer_params_reason(kind, ref)
                if kind == "other" and refs[0][0] in PRODUCER_HINTS:
                    why = f"{why}: it is {PRODUCER_HINTS[refs[0][0]]}"
                if why is not None and self.explicit:
                    report.kept.append((site, f"explicit y / a: {why}"))
                    why = None
            if why is not None:
                report.refused.append((site, why))
                continue
            insert_scale_pair(model.graph, y, lins, refs[0][1].name, self._scale(refs).numpy())
            report.done.append(site)
            report.modified = True
        return report

    def _refusal(self, y, refs, others) -> str | None:
        if (others or y.is_graph_output()) and not self.explicit:
            names = ", ".join(sorted(u.name for u in others) or ["a graph output"])
            stream = " (the residual stream)" if any(map(is_residual_add, others)) else ""
            return f"{y.name} is also read by {names}: 1/a would change them{stream}"
        for _, ref in refs:
            if ref.name not in self.absmax:
                return f"no calibrated absmax for {ref.name} (channel_absmax)"
            w = linear_weight(ref.node)
            if isinstance(w, str) or (why := shared_reason(w[0], {ref.node})):
                return f"weight of {ref.name} cannot absorb a: {w if isinstance(w, str) else why}"
        return None

    def _scale(self, refs) -> torch.Tensor:
        if self.scales is not None and refs[0][1].name in self.scales:   # e.g. trained ones
            return self.scales[refs[0][1].name].detach().float().clone()
        weights = [(const_array(w), layout) for w, layout in
                   (linear_weight(ref.node) for _, ref in refs)]
        return smoothquant_scale(self.absmax[refs[0][1].name], weights, self.alpha)


def smoothquant(model: ir.Model, batches: Iterable[Any], *, runner: RunnerFactory,
                alpha: float = 0.5, roles: tuple[str, ...] = DEFAULT_ROLES,
                explicit: bool = False, inplace: bool = False, threads: int | None = None
                ) -> tuple[ir.Model, ScaleReport]:
    """Calibrate (with ``runner``, e.g. ``OrtRunner``), insert SmoothQuant pairs and fold
    them: returns (model, report) with folded positions (``done``), explicit ones (``kept``)
    and refusals with reasons. The given model is cloned unless ``inplace``."""
    model = model if inplace else model.clone()
    absmax = channel_absmax(model, batches, roles, runner=runner, threads=threads)
    if not absmax:
        raise CalibrationError("smoothquant: no linear of the given roles was found")
    sq = SmoothQuantScales(absmax, alpha, roles, explicit)(model)
    fold = FoldChannelScales(partial=explicit)(model)
    report = ScaleReport(model, sq.modified or fold.modified, fold.done, fold.kept,
                         sq.refused + fold.refused)
    return model, report
