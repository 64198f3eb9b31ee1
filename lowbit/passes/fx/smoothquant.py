"""SmoothQuantScales (FX): closed-form per-channel scales at linear inputs (Xiao et al., 2023).

The pass is written once over the graph view (``lowbit.passes.smoothquant``: the closed form,
the positions and the refusals); here is what only torch.fx has: inserting the pair
``(y / a) * a`` with ``a`` a get_attr ``lowbit_scale_*`` (``fold_channel_scales``), and
calibration: ``channel_absmax`` runs a copy of the GraphModule with per-channel MinMax
observers at the linear inputs. On a prepared graph ``y`` is the activation before its
fake-quant, so the pair goes in front of the input quantizer, which then sees ``y / a``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from lowbit.config import MinMax
from lowbit.passes.fx.fold_channel_scales import FoldChannelScales, insert_scale_pair
from lowbit.passes.reports import (  # the first two re-exported
    DEFAULT_ROLES,
    PRODUCER_HINTS,
    ScaleReport,
)
from lowbit.passes.smoothquant import SmoothQuantScales as _SmoothQuantScales
from lowbit.passes.smoothquant import positions, smooth_and_fold
from lowbit.passes.view.fx import FxView
from lowbit.quant.observers import make_observer
from lowbit.quant.smoothing import absmax_from_range
from lowbit.warning_filters import copy_graph

__all__ = ["DEFAULT_ROLES", "PRODUCER_HINTS", "SmoothQuantScales", "channel_absmax",
           "smoothquant"]


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
    work = copy_graph(gm)
    obs: dict[str, _AbsMax] = {}
    for i, (y, refs) in enumerate(positions(FxView(work), roles)):
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
class SmoothQuantScales(_SmoothQuantScales):
    """Insert SmoothQuant scale pairs at the inputs of the linears of ``roles`` of a
    GraphModule (``lowbit.passes.smoothquant``: positions, refusals, ``explicit``, ``scales``).
    """

    in_place = True

    calibrate_with = "lowbit.passes.fx.smoothquant.channel_absmax"

    def _insert(self, gm: fx.GraphModule, y: fx.Node, readers: set, name: str,
                a: torch.Tensor) -> None:
        insert_scale_pair(gm, y, readers, name, a)

    def _finish(self, gm: fx.GraphModule) -> None:
        gm.graph.lint()
        gm.recompile()


def smoothquant(gm: fx.GraphModule, batches: Iterable[Any], *, alpha: float = 0.5,
                roles: tuple[str, ...] = DEFAULT_ROLES, explicit: bool = False,
                inplace: bool = False) -> tuple[fx.GraphModule, ScaleReport]:
    """Calibrate, insert SmoothQuant pairs and fold them: returns (graph, report); the report
    lists folded positions (``done``), explicit ones (``kept``) and refusals with reasons."""
    gm = gm if inplace else copy_graph(gm)
    absmax = channel_absmax(gm, batches, roles)
    return gm, smooth_and_fold(gm, absmax, SmoothQuantScales, FoldChannelScales, alpha=alpha,
                               roles=roles, explicit=explicit)
