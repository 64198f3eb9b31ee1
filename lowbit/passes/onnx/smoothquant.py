"""SmoothQuantScales (ONNX): closed-form per-channel scales at linear inputs (Xiao et al., 2023).

The pass is written once over the graph view (``lowbit.passes.smoothquant``: the closed form,
the positions and the refusals, as on FX); here is what only ONNX has: inserting the pair
``Mul(Div(y, a), a)`` with ``a`` an initializer ``lowbit_scale_<linear>``
(``fold_channel_scales``), and calibration: ``channel_absmax`` runs the model by the caller's
``runner`` (e.g. ``OrtRunner``) with the linear inputs as extra outputs, feeding the shared
per-channel MinMax observers, as ``calibrate`` does. ``smoothquant`` does all three in one
call. Exporters deduplicate equal initializers (every all-ones norm gain), so "producer
parameter ... is shared" is a refusal seen mostly here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir
import torch

from lowbit.config import MinMax
from lowbit.errors import CalibrationError
from lowbit.passes.onnx.calibrate import RunnerFactory, _feed, _with_outputs
from lowbit.passes.onnx.fold_channel_scales import FoldChannelScales, insert_scale_pair
from lowbit.passes.reports import DEFAULT_ROLES, ScaleReport
from lowbit.passes.smoothquant import SmoothQuantScales as _SmoothQuantScales
from lowbit.passes.smoothquant import positions, smooth_and_fold
from lowbit.passes.view.onnx import OnnxView
from lowbit.quant.observers import make_observer
from lowbit.quant.smoothing import absmax_from_range

__all__ = ["SmoothQuantScales", "channel_absmax", "smoothquant"]


def channel_absmax(model: ir.Model, batches: Iterable[Any], roles: Iterable[str] = DEFAULT_ROLES,
                   *, runner: RunnerFactory, threads: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Per-channel max |x| (last axis) at the input of every linear of ``roles``, keyed by the
    linear's name (as FX names it). Runs the model with ``runner`` (``OrtRunner``) with the
    inputs as extra outputs (``calibrate``'s machinery; the model is not changed); batches and
    ``runner`` as for ``calibrate``."""
    groups = positions(OnnxView(model.graph), roles)
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


@dataclasses.dataclass(frozen=True)
class SmoothQuantScales(_SmoothQuantScales):
    """Insert SmoothQuant scale pairs at the inputs of the linears of ``roles`` of an onnx_ir
    model (``lowbit.passes.smoothquant``: positions, refusals, ``explicit``, ``scales``; ONNX
    spotting does not see through a kept ``Div(y, a)``)."""

    in_place = True

    calibrate_with = "lowbit.passes.onnx.smoothquant.channel_absmax"

    def _insert(self, model: ir.Model, y: ir.Value, readers: set, name: str,
                a: torch.Tensor) -> None:
        insert_scale_pair(model.graph, y, readers, name, a.numpy())


def smoothquant(model: ir.Model, batches: Iterable[Any], *, runner: RunnerFactory,
                alpha: float = 0.5, roles: tuple[str, ...] = DEFAULT_ROLES,
                explicit: bool = False, inplace: bool = False, threads: int | None = None
                ) -> tuple[ir.Model, ScaleReport]:
    """Calibrate (with ``runner``, e.g. ``OrtRunner``), insert SmoothQuant pairs and fold
    them: returns (model, report) with folded positions (``done``), explicit ones (``kept``)
    and refusals with reasons. The given model is cloned unless ``inplace``."""
    model = model if inplace else model.clone()
    absmax = channel_absmax(model, batches, roles, runner=runner, threads=threads)
    return model, smooth_and_fold(model, absmax, SmoothQuantScales, FoldChannelScales,
                                  alpha=alpha, roles=roles, explicit=explicit)
