"""SmoothQuantScales: closed-form per-channel scales at linear inputs (Xiao et al., 2023).

For a tensor ``y`` (last axis C) read by linears W_1..W_n, with calibrated per-channel
``max|y_j|`` and weight per-input-channel ``max_k max_o |W_k[o, j]|``::

    a_j = max|y_j|^alpha / max|W_:,j|^(1 - alpha)     (lowbit.quant.smoothing, clamped)
    y   ->  y' = (y / a) * a                                  (a scale pair, see below)

The pair is the identity up to float rounding; ``FoldChannelScales`` then folds ``1/a`` into
the producer and ``a`` into the consumers, so ``Q`` placed at the linear input sees ``y / a``,
whose outlier channels are flattened, while the weights take the difficulty. Calibration is
separate (``channel_absmax``) so the pass itself stays a pure graph rewrite.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn

from lowbit.config import MinMax
from lowbit.errors import CalibrationError
from lowbit.passes.fx.fold_channel_scales import (
    FoldChannelScales,
    insert_scale_pair,
    linear_weight,
    producer_of,
    shared_reason,
)
from lowbit.passes.fx.graph_utils import is_fake_quant, linear_operands
from lowbit.passes.fx.spot import all_norms, find_transformer
from lowbit.passes.infra import Pass
from lowbit.passes.reports import (  # the first two re-exported
    DEFAULT_ROLES,
    PRODUCER_HINTS,
    SCALE_PREFIX,
    ScaleReport,
)
from lowbit.quant.observers import make_observer
from lowbit.quant.smoothing import absmax_from_range, check_options, smoothquant_scale

__all__ = ["DEFAULT_ROLES", "PRODUCER_HINTS", "SmoothQuantScales", "channel_absmax",
           "smoothquant"]



def _positions(gm: fx.GraphModule, roles: Iterable[str]):
    """(y, [(role, LinearRef)]) per tensor read by linears of ``roles``, in graph order;
    ``y`` is the activation operand, before any activation fake-quant."""
    groups: dict[fx.Node, list] = {}
    for role, ref in find_transformer(gm).linears():
        if role in roles:
            y = ref.node.args[linear_operands(ref.node)[0]]
            while is_fake_quant(y):
                y = y.args[0]
            groups.setdefault(y, []).append((role, ref))
    return sorted(groups.items())


class _AbsMax(nn.Module):
    def __init__(self, site: str):
        super().__init__()
        self.obs = make_observer(MinMax(), site, qmin=0, qmax=255, symmetric=False,
                                 per_channel=True)

    def forward(self, x):
        self.obs.update(x)
        return x


def channel_absmax(gm: fx.GraphModule, batches: Iterable[Any],
                   roles: Iterable[str] = DEFAULT_ROLES) -> dict[str, torch.Tensor]:
    """Per-channel max |x| (last axis) at the input of every linear of ``roles``, keyed by
    the linear's module name. Runs a copy of ``gm`` with per-channel MinMax observers."""
    work = copy.deepcopy(gm)
    obs: dict[str, _AbsMax] = {}
    for i, (y, refs) in enumerate(_positions(work, tuple(roles))):
        mod = _AbsMax(refs[0][1].name + ":input")
        work.add_submodule(f"lowbit_absmax_{i}", mod)
        with work.graph.inserting_after(y):
            rec = work.graph.call_module(f"lowbit_absmax_{i}", (y,))
        for _, ref in refs:
            ref.node.replace_input_with(y, rec)
            obs[ref.name] = mod
    work.recompile()
    with torch.no_grad():
        for b in batches:
            work(**b) if isinstance(b, dict) else work(*b) if isinstance(b, (tuple, list)) \
                else work(b)
    out = {}
    for name, mod in obs.items():
        lo, hi = mod.obs.range()
        out[name] = absmax_from_range(lo, hi)
    return out


@dataclasses.dataclass(frozen=True)
class SmoothQuantScales(Pass):
    """Insert SmoothQuant scale pairs at the inputs of the linears of ``roles``.

    Foldable (pair inserted): a tensor read only by linears whose producer absorbs 1/a
    exactly: a norm with a weight (pre-LN: attn_norm -> q/k/v, ffn_norm -> up/gate) or a
    linear. Refused, with the reason in ``ScaleReport.refused``: post-LN norm outputs (the
    residual stream also reads them, so 1/a would change it: all of BERT's norm positions),
    the FFN-out input after a non-linear activation, the o input after the attention core
    (exact per channel through softmax(.)V in principle, not handled here), a tensor also
    read by linears outside ``roles``, tied or shared weights, missing calibration.
    ``explicit=True`` inserts the pair at producer-refused positions too (listed in ``kept``);
    a partial fold (``FoldChannelScales(partial=True)``) then keeps ``y / a`` as an explicit
    op. ``scales`` (by first consumer name) replaces the closed form where given (Quadapter's
    trained scales). Positions already carrying a pair are skipped (a second run reports no
    change). ``done`` lists every position that got a pair.
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
                      "lowbit.passes.fx.smoothquant.channel_absmax")

    def call(self, gm: fx.GraphModule) -> ScaleReport:
        report = ScaleReport(gm, False)
        norms = all_norms(gm)
        for y, refs in _positions(gm, self.roles):
            site = "/".join(r for r, _ in refs) + f" <- {refs[0][1].name}"
            if _scaled(y):
                continue
            readers = {u for u in y.users if u.op != "output"}
            lins = {ref.node for _, ref in refs}
            allowed = {u for u in readers if u in lins or is_fake_quant(u)}
            why = self._refusal(gm, y, refs, readers - allowed)
            if why is None:
                kind, _, why = producer_of(gm, y, norms, allowed)
                if kind == "other" and refs[0][0] in PRODUCER_HINTS:
                    why = f"{why}: it is {PRODUCER_HINTS[refs[0][0]]}"
                if why is not None and self.explicit:
                    report.kept.append((site, f"explicit y / a: {why}"))
                    why = None
            if why is not None:
                report.refused.append((site, why))
                continue
            a = self._scale(gm, refs)
            insert_scale_pair(gm, y, allowed, refs[0][1].name, a)
            report.done.append(site)
            report.modified = True
        if report.modified:
            gm.graph.lint()
            gm.recompile()
        return report

    def _refusal(self, gm, y, refs, others) -> str | None:
        if others and (not self.explicit or any(is_fake_quant(u) for u in others)):
            names = ", ".join(sorted(u.name for u in others))
            return (f"{y.name} is also read by {names}: 1/a would change them"
                    + (" (the residual stream)" if "add" in names else ""))
        for _, ref in refs:
            if ref.name not in self.absmax:
                return f"no calibrated absmax for {ref.name} (channel_absmax)"
            w = linear_weight(gm, ref.node)
            if w is None or (why := shared_reason(gm, w[0], {ref.node})):
                return f"weight of {ref.name} cannot absorb a: {why or 'not a parameter'}"
        return None

    def _scale(self, gm, refs) -> torch.Tensor:
        if self.scales is not None and refs[0][1].name in self.scales:   # e.g. trained ones
            return self.scales[refs[0][1].name].detach().float().clone()
        weights = []
        for _, ref in refs:
            attr, layout = linear_weight(gm, ref.node)
            weights.append((attr.graph.owning_module.get_parameter(attr.target), layout))
        return smoothquant_scale(self.absmax[refs[0][1].name], weights, self.alpha)


def _is_scale_op(n: object) -> bool:
    return (isinstance(n, fx.Node) and n.target in (torch.ops.aten.div.Tensor,
                                                      torch.ops.aten.mul.Tensor)
            and len(n.args) == 2 and getattr(n.args[1], "op", None) == "get_attr"
            and str(n.args[1].target).startswith(SCALE_PREFIX))


def _scaled(y: fx.Node) -> bool:
    """``y`` is a scale op's output, or already feeds one."""
    return _is_scale_op(y) or any(_is_scale_op(u) for u in y.users)


def smoothquant(gm: fx.GraphModule, batches: Iterable[Any], *, alpha: float = 0.5,
                roles: tuple[str, ...] = DEFAULT_ROLES, explicit: bool = False,
                inplace: bool = False) -> tuple[fx.GraphModule, ScaleReport]:
    """Calibrate, insert SmoothQuant pairs and fold them: returns (graph, report); the report
    lists folded positions (``done``), explicit ones (``kept``) and refusals with reasons."""
    gm = gm if inplace else copy.deepcopy(gm)
    absmax = channel_absmax(gm, batches, roles)
    if not absmax:
        raise CalibrationError("smoothquant: no linear of the given roles was found")
    sq = SmoothQuantScales(absmax, alpha, roles, explicit)(gm)
    fold = FoldChannelScales(partial=explicit)(gm)
    report = ScaleReport(gm, sq.modified or fold.modified, fold.done, fold.kept,
                         sq.refused + fold.refused)
    return gm, report
