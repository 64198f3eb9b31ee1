"""The ONNX side of ``lowbit.quantize``: spot -> calibrate -> insert QDQ, as one ``Pipeline``.

    qmodel = lowbit.quantize("model.onnx", lowbit.recipes.W8A8, calibration=batches,
                             out="model.qdq.onnx")                  # dispatches here
    quantize_onnx_file("model.onnx", "model.qdq.onnx", "w8a8", batches)     # the CLI's path

The pipeline runs on a copy of the model (a given ``onnx_ir.Model`` is never changed):

1. ``UpgradeOpset(21)`` when the file is older (the QDQ forms need opset 21);
2. ``Calibrate``: ``plan_model(model, recipe)`` picks the tensors to quantize, by role
   (``plan_sites`` over ``find_transformer(model)``, plus both halves of every materialized
   tensor-train layer the model's ``metadata_props["lowbit.tt"]`` lists); ``observe`` takes
   static activation ranges from onnxruntime runs of the float model; ``PegPermute`` folds
   the range-sorted channel order of PEG sites with ``permute=True`` into the initializers
   around them (their ranges permuted alike; the report is logged and kept in
   ``metadata_props["lowbit.peg"]``); then ``qparams`` from the ranges;
3. ``InsertQDQ(recipe, qparams)``: integer weights + DequantizeLinear, activation QDQ.

A BCQ recipe (``recipes.W3_BCQ``) runs ``UpgradeOpset`` then ``QuantizeBCQ``: each linear
becomes a ``lowbit.BCQLinear`` node whose decomposition the model carries as a local function
(``lowbit.passes.onnx.bcq``), so onnxruntime runs it.

The ``PipelineReport`` (per stage: modified, time) is logged at DEBUG on ``lowbit.passes``
and kept in the returned model's ``meta["lowbit_pipeline"]`` (in memory, not in the file).
Tensors the recipe would quantize but that cannot be (a weight computed in the graph, a graph
output) are logged with the reason and listed in the output model's
``metadata_props["lowbit.skipped"]`` (JSON); the recipe is recorded in
``metadata_props["lowbit.recipe"]``. Files loaded with external data are written with external
data again (``<out>.data``); writes are atomic.

This module is an entry point, not a pass: it runs onnxruntime (``lowbit.backends``) for
calibration, which passes may not import. It was ``lowbit.passes.onnx.api`` (that path still
re-exports it, with a DeprecationWarning, for one release).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

from lowbit.config import BCQ, Recipe
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.infra import Pass, PassResult, Pipeline
from lowbit.passes.onnx.bcq import QuantizeBCQ
from lowbit.passes.onnx.calibrate import observe
from lowbit.passes.onnx.calibrate import qparams as calibrate_qparams
from lowbit.passes.onnx.insert_qdq import QDQ_OPSET, InsertQDQ, Plan, plan_model
from lowbit.passes.onnx.load import has_external_data, load_onnx, save_onnx, upgrade_opset
from lowbit.passes.onnx.peg_permute import PegPermute, peg_orders

__all__ = ["Calibrate", "UpgradeOpset", "quantize_onnx", "quantize_onnx_file"]

log = logging.getLogger("lowbit.passes.onnx")


def _recipe(recipe: Recipe | str) -> Recipe:
    if isinstance(recipe, str):
        from lowbit.recipes import get

        return get(recipe)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a lowbit.config.Recipe or a built-in recipe name, "
                          f"got {type(recipe).__name__}")
    return recipe


@dataclasses.dataclass(frozen=True)
class UpgradeOpset(Pass):
    """Convert the model to default-domain ``opset`` when it is older (``upgrade_opset``)."""

    in_place = True
    opset: int = QDQ_OPSET

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, upgrade_opset(model, self.opset))


@dataclasses.dataclass
class _Calibrated:
    """What ``Calibrate`` hands on within one run: the site plan (for the skipped list) and
    the activation qparams, a dict ``InsertQDQ`` was built with and reads when it runs."""

    qparams: dict = dataclasses.field(default_factory=dict)
    plan: Plan | None = None


@dataclasses.dataclass(frozen=True)
class Calibrate(Pass):
    """Plan the recipe's sites, observe static activation ranges in onnxruntime, fold PEG
    permutations (``PegPermute``), and compute the activation qparams into ``out.qparams``.

    ``modified`` is True only when a PEG permutation was folded: observing runs a serialized
    copy with extra outputs and leaves the model as it was. Recipes with no static activation
    sites (weight-only, dynamic) observe nothing and need no ``batches``.
    """

    in_place = True
    recipe: Recipe
    batches: Iterable[Any] | None
    out: _Calibrated = dataclasses.field(default_factory=_Calibrated)
    progress: bool = True

    def call(self, model: ir.Model) -> PassResult:
        plan = self.out.plan = plan_model(model, self.recipe)
        static = plan.static()
        if not static:
            return PassResult(model, False)
        if self.batches is None:
            raise CalibrationError(f"recipe {self.recipe.name} has static activation ranges "
                                   f"({len(static)} site(s)): pass calibration=<iterable of "
                                   f"batches>")
        from lowbit.backends.onnxruntime import OrtRunner  # passes take the runner

        ranges = observe(model, static, self.batches, runner=OrtRunner, progress=self.progress)
        orders = {}
        rep = PegPermute(tuple(static), ranges)(model)
        ranges = rep.ranges                  # those of the folded families' PEG sites permuted
        if rep.modified:
            orders = peg_orders(rep, static)
            for fam in rep.families:
                log.info("PEG permutation folded for %s: %d initializers, %d gather(s) left%s",
                         ", ".join(fam["sites"]), fam["params"], len(fam["gathers"]),
                         "".join(f"\n  {where}: {why}" for where, why in fam["gathers"]))
            model.metadata_props["lowbit.peg"] = json.dumps(
                [{k: fam[k] for k in ("sites", "channels", "params", "gathers")}
                 for fam in rep.families])
        self.out.qparams.update(calibrate_qparams(static, ranges, orders))
        return PassResult(model, rep.modified)


def quantize_onnx(model: ir.Model | str | os.PathLike, recipe: Recipe | str,
                  calibration: Iterable[Any] | None = None, *,
                  out: str | os.PathLike | None = None, progress: bool = True,
                  copy: bool = True) -> ir.Model:
    """Quantize an ONNX model (a path or an ``onnx_ir.Model``, which is copied) with ``recipe``.

    ``calibration`` (an iterable of batches) is needed when the recipe has static activation
    ranges. With ``out`` the result is also written there (see ``save_onnx``). ``copy=False``
    quantizes a given ``onnx_ir.Model`` in place (``lowbit.quantize`` does, on a model it built
    itself from an ``onnx.ModelProto``). ``lowbit.quantize`` is the public entry point.

    Raises:
        OnnxModelError: unreadable or too old a file, missing external data.
        ConfigError: a recipe role or site the model lacks, a spec the passes refuse.
        CalibrationError: static ranges needed but no (or empty, or NaN) calibration data.
        WeightError: an initializer (a weight) holds NaN or inf.
    """
    recipe = _recipe(recipe)
    if isinstance(model, ir.Model):
        external = has_external_data(model)
        model = model.clone() if copy else model
    else:
        model = load_onnx(model)
        external = has_external_data(model)
    from lowbit.finite_weights import check_finite_weights

    check_finite_weights(model)          # a NaN weight is named here, not blamed on the data
    calibrated = _Calibrated()
    if isinstance(recipe.weight, BCQ):       # weight-only binary codes: no calibration
        passes = [UpgradeOpset(QDQ_OPSET), QuantizeBCQ(recipe, progress)]
    else:
        passes = [UpgradeOpset(QDQ_OPSET), Calibrate(recipe, calibration, calibrated, progress),
                  InsertQDQ(recipe, calibrated.qparams)]
    pipeline = Pipeline(passes, name=f"quantize (ONNX, {recipe.name})")
    model = pipeline(model).graph
    model.meta["lowbit_pipeline"] = pipeline.report
    skipped = calibrated.plan.skipped if calibrated.plan is not None else []
    for name, why in skipped:
        log.warning("not quantized: %s: %s", name, why)
    model.metadata_props["lowbit.recipe"] = recipe.name
    if skipped:
        model.metadata_props["lowbit.skipped"] = json.dumps(skipped)
    if out is not None:
        save_onnx(model, out, external_data=external or None)
    return model


def quantize_onnx_file(in_path: str | os.PathLike, out_path: str | os.PathLike,
                       recipe: Recipe | str, calibration_batches: Iterable[Any] | None = None,
                       *, progress: bool = True) -> pathlib.Path:
    """``lowbit quantize model.onnx --recipe ... -o out.onnx``: quantize a file into another,
    written atomically (external data kept external). Returns ``out_path``."""
    out_path = pathlib.Path(out_path)
    if pathlib.Path(in_path).resolve() == out_path.resolve():
        raise ConfigError(f"refusing to overwrite the input model {in_path}: give another -o")
    quantize_onnx(in_path, recipe, calibration_batches, out=out_path, progress=progress)
    return out_path
