"""PT2E-style entry points: prepare -> calibrate -> convert, and ``quantize`` doing all three.

    qgm = lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=batches)

The user's graph is deep-copied first; nothing of theirs is mutated. Calibration takes any
iterable of batches (a dict of keyword inputs, a tuple of positional inputs, or one tensor),
shows progress on stderr, and keeps memory constant in the number of batches (observers hold
fixed-size state; outputs are dropped).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from lowbit.config import Recipe
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.fx.convert_qdq import ConvertToQDQ
from lowbit.passes.fx.insert_fake_quant import InsertFakeQuant, fake_quant_nodes
from lowbit.quant.fake_quant import FakeQuantize

__all__ = ["prepare", "calibrate", "freeze", "convert", "quantize"]


def prepare(gm: fx.GraphModule, recipe: Recipe, *, inplace: bool = False) -> fx.GraphModule:
    """Insert FakeQuantize modules (observing) where ``recipe`` says."""
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError(f"prepare() takes a captured fx.GraphModule (lowbit.capture), got "
                          f"{type(gm).__name__}")
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a lowbit.config.Recipe, got {type(recipe).__name__}")
    gm = gm if inplace else copy.deepcopy(gm)
    return InsertFakeQuant(recipe)(gm).graph


def _run(gm: torch.nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        gm(**batch)
    elif isinstance(batch, (tuple, list)):
        gm(*batch)
    else:
        gm(batch)


def calibrate(gm: fx.GraphModule, batches: Iterable[Any], *, progress: bool = True) -> int:
    """Run ``batches`` through a prepared graph so its observers see the data; returns the
    number of batches. Raises CalibrationError on no data or on NaN/inf reaching an observer."""
    needs = [gm.get_submodule(n.target) for n in fake_quant_nodes(gm)
             if gm.get_submodule(n.target).observing]
    if not needs:
        return 0
    count, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            _run(gm, batch)
            count += 1
            if progress and (sys.stderr.isatty() or count % 50 == 0):
                print(f"\r[lowbit] calibrating: {count} batch(es), "
                      f"{time.perf_counter() - t0:.1f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(f"\r[lowbit] calibrated on {count} batch(es) in {time.perf_counter() - t0:.1f} s"
              f" ({len(needs)} activation observers)", file=sys.stderr, flush=True)
    if count == 0:
        raise CalibrationError("calibration data is empty: give at least one batch "
                               f"({len(needs)} activation quantizers need ranges)")
    return count


def freeze(gm: fx.GraphModule) -> fx.GraphModule:
    """Fix every quantizer's scale/zero point; the graph then fake-quantizes (eval or QAT).

    PEG quantizers with ``permute=True`` first get their permutation folded into the weights
    and norms around them (``PegPermute``; the function is unchanged); its report is kept in
    ``gm.meta["lowbit_peg"]`` (per channel family: sites, parameters permuted, gathers left).
    """
    from lowbit.passes.fx.peg_permute import PegPermute

    if PegPermute._seeds(gm):
        rep = PegPermute()(gm)
        gm.meta.setdefault("lowbit_peg", []).extend(
            {k: v for k, v in f.items() if k != "order"} for f in rep.families)
    for n in fake_quant_nodes(gm):
        fq: FakeQuantize = gm.get_submodule(n.target)
        if fq.frozen:
            continue
        weight = None
        if fq.is_weight:
            src = n.args[0]
            params = dict(gm.named_parameters()) | dict(gm.named_buffers())
            weight = params[src.target]
        fq.freeze(weight)
    return gm


def convert(gm: fx.GraphModule, *, inplace: bool = False) -> fx.GraphModule:
    """Frozen fake-quant -> standard quantized_decomposed q/dq ops (freezes first if needed)."""
    gm = gm if inplace else copy.deepcopy(gm)
    freeze(gm)
    return ConvertToQDQ()(gm).graph


def quantize(gm: fx.GraphModule, recipe: Recipe, calibration: Iterable[Any] | None = None,
             *, progress: bool = True) -> fx.GraphModule:
    """prepare -> calibrate -> convert. Weight-only and dynamic recipes need no calibration."""
    prepared = prepare(gm, recipe)
    observing = any(prepared.get_submodule(n.target).observing
                    for n in fake_quant_nodes(prepared))
    if observing:
        if calibration is None:
            raise CalibrationError(f"recipe {recipe.name} has static activation ranges: pass "
                                   f"calibration=<iterable of batches>")
        calibrate(prepared, calibration, progress=progress)
    return convert(prepared, inplace=True)
