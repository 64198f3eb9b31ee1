"""``lowbit.quantize``, one verb for every input, and the PT2E-style steps it runs on FX graphs.

    qgm = lowbit.quantize(model, recipe, calibration=batches, example_inputs=inputs)  # nn.Module
    qgm = lowbit.quantize(gm, recipe, calibration=batches)          # a captured fx.GraphModule
    qm = lowbit.quantize("model.onnx", recipe, calibration=feeds, out="model.qdq.onnx")  # ONNX

On FX the steps are ``prepare -> calibrate -> freeze -> convert``, also callable one by one
(QAT trains between ``freeze`` and ``convert``); ``quantize`` runs them as one ``Pipeline`` of
passes: ``InsertFakeQuant``, ``Calibrate``, ``Freeze``, ``ConvertToQDQ``. A BCQ recipe
(``recipes.W3_BCQ``: binary-coded weights, float activations) runs ``QuantizeBCQ`` instead:
each linear becomes one ``lowbit::bcq_linear``, no calibration. ONNX inputs go to
``lowbit.onnx_quantize`` (``UpgradeOpset``, ``Calibrate`` in onnxruntime, ``InsertQDQ``).

The user's model is copied first; nothing of theirs is mutated. Calibration takes any
iterable of batches (a dict of keyword inputs, a tuple of positional inputs, or one tensor),
draws a progress bar on a terminal (``lowbit.progress``) and prints one summary line on stderr,
and keeps memory constant in the number of batches (observers hold fixed-size state; outputs
are dropped).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from lowbit.config import BCQ, Recipe
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.fx.bcq import QuantizeBCQ
from lowbit.passes.fx.convert_qdq import ConvertToQDQ
from lowbit.passes.fx.insert_fake_quant import InsertFakeQuant, fake_quant_nodes
from lowbit.passes.fx.quantize_tt import QuantizeTTHalves
from lowbit.passes.infra import Pass, PassResult, Pipeline
from lowbit.passes.tt import TT_META
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.quant.fake_quant import FakeQuantize
from lowbit.warning_filters import copy_graph

__all__ = ["Calibrate", "Freeze", "calibrate", "convert", "freeze", "onnx_kind", "prepare",
           "quantize"]


def prepare(gm: fx.GraphModule, recipe: Recipe, *, inplace: bool = False) -> fx.GraphModule:
    """Insert FakeQuantize modules (observing) where ``recipe`` says."""
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError(f"prepare() takes a captured fx.GraphModule (lowbit.capture), got "
                          f"{type(gm).__name__}")
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a lowbit.config.Recipe, got {type(recipe).__name__}")
    gm = gm if inplace else copy_graph(gm)
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
        for batch in progress_bar(batches, desc="calibrating", unit="batch", enabled=progress):
            _run(gm, batch)
            count += 1
    if count == 0:
        raise CalibrationError("calibration data is empty: give at least one batch "
                               f"({len(needs)} activation quantizers need ranges)")
    say(f"calibrated on {count} batch(es) in {time.perf_counter() - t0:.1f} s "
        f"({len(needs)} activation observers)", enabled=progress)
    return count


def freeze(gm: fx.GraphModule) -> fx.GraphModule:
    """Fix every quantizer's scale/zero point; the graph then fake-quantizes (eval or QAT).

    PEG quantizers with ``permute=True`` first get their permutation folded into the weights
    and norms around them (``PegPermute``; the function is unchanged); its report is kept in
    ``gm.meta["lowbit_peg"]`` (per channel family: sites, parameters permuted, gathers left).
    """
    _freeze(gm)
    return gm


def _freeze(gm: fx.GraphModule) -> bool:
    """``freeze``; returns whether it changed anything (a permutation, a quantizer frozen)."""
    from lowbit.passes.fx.peg_permute import PegPermute

    changed = False
    if PegPermute._seeds(gm):
        rep = PegPermute()(gm)
        gm.meta.setdefault("lowbit_peg", []).extend(
            {k: v for k, v in f.items() if k != "order"} for f in rep.families)
        changed = rep.modified
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
        changed = True
    return changed


def convert(gm: fx.GraphModule, *, inplace: bool = False) -> fx.GraphModule:
    """Frozen fake-quant -> standard quantized_decomposed q/dq ops (freezes first if needed)."""
    gm = gm if inplace else copy_graph(gm)
    freeze(gm)
    return ConvertToQDQ()(gm).graph


@dataclasses.dataclass(frozen=True)
class Calibrate(Pass):
    """``calibrate`` as a pipeline stage: run ``batches`` through the prepared graph so its
    observing quantizers record ranges. It changes observer state (buffers of the graph's
    FakeQuantize modules), not nodes; ``modified`` says whether any observer saw data. A graph
    with nothing to observe (weight-only, dynamic recipes) needs no ``batches``."""

    in_place = True
    batches: Iterable[Any] | None
    progress: bool = True
    recipe: str = ""  # named in the error when static ranges need batches and there are none

    def call(self, gm: fx.GraphModule) -> PassResult:
        if not any(gm.get_submodule(n.target).observing for n in fake_quant_nodes(gm)):
            return PassResult(gm, False)
        if self.batches is None:
            raise CalibrationError(f"recipe {self.recipe} has static activation ranges: pass "
                                   f"calibration=<iterable of batches>")
        return PassResult(gm, calibrate(gm, self.batches, progress=self.progress) > 0)


@dataclasses.dataclass(frozen=True)
class Freeze(Pass):
    """``freeze`` as a pipeline stage: fold PEG permutations, then fix every quantizer's
    scale / zero point. A second run finds everything frozen and reports no change."""

    in_place = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, _freeze(gm))


def _quantize_fx(gm: fx.GraphModule, recipe: Recipe, calibration: Iterable[Any] | None,
                 progress: bool) -> fx.GraphModule:
    """The FX pipeline on ``gm`` itself (the caller copied it)."""
    from lowbit.finite_weights import check_finite_weights

    check_finite_weights(gm)             # a NaN weight is named here, not blamed on the data
    if isinstance(recipe.weight, BCQ):       # weight-only binary codes: no calibration
        passes = [QuantizeBCQ(recipe, progress)]
    else:
        tt = [QuantizeTTHalves(recipe)] if any(e.get("materialized")
                                               for e in gm.meta.get(TT_META, [])) else []
        passes = [InsertFakeQuant(recipe), *tt, Calibrate(calibration, progress, recipe.name),
                  Freeze(), ConvertToQDQ()]
    pipeline = Pipeline(passes, name=f"quantize (FX, {recipe.name})")
    qgm = pipeline(gm).graph
    qgm.meta["lowbit_pipeline"] = pipeline.report
    qgm.meta["lowbit_recipe"] = recipe.name          # export_onnx writes it into the file
    return qgm


def onnx_kind(model: Any) -> str | None:
    """"path", "ir" (onnx_ir.Model), "proto" (onnx.ModelProto) or None. Whoever holds an ONNX
    model object has imported its package, so this imports neither."""
    if isinstance(model, (str, os.PathLike)):
        return "path"
    if (ir := sys.modules.get("onnx_ir")) is not None and isinstance(model, ir.Model):
        return "ir"
    if (onnx := sys.modules.get("onnx")) is not None and isinstance(model, onnx.ModelProto):
        return "proto"
    return None


def quantize(model: Any, recipe: Recipe | str, calibration: Iterable[Any] | None = None, *,
             example_inputs: Any = None, out: str | os.PathLike | None = None,
             progress: bool = True) -> Any:
    """Quantize ``model`` with ``recipe``; the one entry point for every kind of model.

    ``model`` is one of (the result is the same kind of model, quantized):

    - ``torch.nn.Module`` with ``example_inputs``: captured with ``lowbit.capture(model,
      example_inputs)`` (static shapes; capture it yourself for ``dynamic=True``), then as a
      GraphModule. Returns the quantized ``fx.GraphModule``, itself an ``nn.Module`` called
      like the model.
    - ``fx.GraphModule`` (from ``lowbit.capture``): returns a quantized copy, with standard
      ``quantized_decomposed`` q/dq ops (``lowbit.export_onnx`` writes it as QDQ ONNX).
    - ``onnx_ir.Model``, or a path to an ``.onnx`` file: quantized by the ONNX passes
      (``lowbit.onnx_quantize``; calibration runs in onnxruntime, batches are dicts of
      arrays); returns an ``onnx_ir.Model``, also written to ``out`` when given (external
      data kept external).
    - ``onnx.ModelProto``: as an ``onnx_ir.Model``; returns an ``onnx.ModelProto``.

    ``recipe`` is a ``lowbit.config.Recipe`` or a built-in name (``"w8a8"``). ``calibration``
    is an iterable of batches, needed when the recipe has static activation ranges.

    The passes run as one ``Pipeline``; its ``PipelineReport`` (per pass: modified, time) is
    logged at DEBUG on ``lowbit.passes`` (``lowbit -v``) and kept in the result's
    ``meta["lowbit_pipeline"]`` (GraphModule and onnx_ir Model; a ModelProto has no meta).

    Raises:
        ConfigError: a model of another type, an nn.Module without ``example_inputs``, a
            recipe the model cannot take (roles it lacks, group sizes that do not divide).
        CalibrationError: static ranges needed but no (or empty, or NaN) calibration data.
        WeightError: a weight of the model holds NaN or inf (named).
        CaptureError, OnnxModelError: the model cannot be captured / read.
    """
    if isinstance(recipe, str):
        from lowbit.recipes import get

        recipe = get(recipe)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a lowbit.config.Recipe or a built-in recipe name, "
                          f"got {type(recipe).__name__}")
    if isinstance(model, torch.nn.Module):
        if out is not None:
            raise ConfigError("out= writes ONNX models; write a quantized GraphModule with "
                              "lowbit.export_onnx(qgm, path)")
        if isinstance(model, fx.GraphModule):
            return _quantize_fx(copy_graph(model), recipe, calibration, progress)
        if example_inputs is None:
            raise ConfigError(f"quantize() captures a {type(model).__name__} (an nn.Module) "
                              f"with lowbit.capture first: pass example_inputs=<a batch as "
                              f"forward() takes it>, or pass lowbit.capture(model, inputs)")
        from lowbit.capture import capture

        return _quantize_fx(capture(model, example_inputs), recipe, calibration, progress)
    if kind := onnx_kind(model):
        if example_inputs is not None:
            raise ConfigError("example_inputs is for capturing an nn.Module; an ONNX model "
                              "needs none")
        from lowbit.onnx_quantize import quantize_onnx

        if kind == "proto":
            import onnx_ir as ir

            q = quantize_onnx(ir.from_proto(model), recipe, calibration, out=out,
                              progress=progress, copy=False)
            return ir.to_proto(q)
        return quantize_onnx(model, recipe, calibration, out=out, progress=progress)
    raise ConfigError(f"quantize() takes a torch.nn.Module (with example_inputs), an "
                      f"fx.GraphModule from lowbit.capture, an onnx_ir.Model, an "
                      f"onnx.ModelProto or a path to an .onnx file; got "
                      f"{type(model).__module__}.{type(model).__qualname__}")
