"""Entry points for ONNX files: spot -> calibrate -> insert QDQ, in one call.

    qmodel = quantize_onnx("model.onnx", lowbit.recipes.W8A8, calibration=batches,
                           out="model.qdq.onnx")
    quantize_onnx_file("model.onnx", "model.qdq.onnx", "w8a8", batches)     # the CLI's path

The steps, on a copy of the model (a given ``onnx_ir.Model`` is never changed):

1. ``upgrade_opset(model, 21)`` when the file is older (the QDQ forms need opset 21);
2. ``plan_sites(find_transformer(model), recipe)``: the tensors to quantize, by role;
3. ``observe``: static activation ranges from onnxruntime runs of the float model;
4. ``PegPermute``: PEG sites with ``permute=True`` get their range-sorted channel order folded
   into the initializers around them (their ranges permuted alike; the report is logged and
   kept in ``metadata_props["lowbit.peg"]``), then ``qparams`` from the ranges;
5. ``InsertQDQ(recipe, qparams)``: integer weights + DequantizeLinear, activation QDQ.

Tensors the recipe would quantize but that cannot be (a weight computed in the graph, a graph
output) are logged with the reason and listed in the output model's
``metadata_props["lowbit.skipped"]`` (JSON); the recipe is recorded in
``metadata_props["lowbit.recipe"]``. Files loaded with external data are written with external
data again (``<out>.data``); writes are atomic.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

from lowbit.config import Recipe
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.onnx.calibrate import observe
from lowbit.passes.onnx.calibrate import qparams as calibrate_qparams
from lowbit.passes.onnx.insert_qdq import QDQ_OPSET, InsertQDQ, plan_sites
from lowbit.passes.onnx.load import has_external_data, load_onnx, save_onnx, upgrade_opset
from lowbit.passes.onnx.peg_permute import PegPermute, peg_orders
from lowbit.passes.onnx.spot import find_transformer

__all__ = ["quantize_onnx", "quantize_onnx_file"]

log = logging.getLogger("lowbit.passes.onnx")


def _recipe(recipe: Recipe | str) -> Recipe:
    if isinstance(recipe, str):
        from lowbit.recipes import get

        return get(recipe)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a lowbit.config.Recipe or a built-in recipe name, "
                          f"got {type(recipe).__name__}")
    return recipe


def quantize_onnx(model: ir.Model | str | os.PathLike, recipe: Recipe | str,
                  calibration: Iterable[Any] | None = None, *,
                  out: str | os.PathLike | None = None, progress: bool = True) -> ir.Model:
    """Quantize an ONNX model (a path or an ``onnx_ir.Model``, which is copied) with ``recipe``.

    ``calibration`` (an iterable of batches) is needed when the recipe has static activation
    ranges. With ``out`` the result is also written there (see ``save_onnx``).

    Raises:
        OnnxModelError: unreadable or too old a file, missing external data.
        ConfigError: a recipe role or site the model lacks, a spec the passes refuse.
        CalibrationError: static ranges needed but no (or empty, or NaN) calibration data.
    """
    recipe = _recipe(recipe)
    external = False
    if isinstance(model, ir.Model):
        external = has_external_data(model)
        model = model.clone()
    else:
        model = load_onnx(model)
        external = has_external_data(model)
    upgrade_opset(model, QDQ_OPSET)
    plan = plan_sites(find_transformer(model), recipe)
    static = plan.static()
    qparams = {}
    if static:
        if calibration is None:
            raise CalibrationError(f"recipe {recipe.name} has static activation ranges "
                                   f"({len(static)} site(s)): pass calibration=<iterable of "
                                   f"batches>")
        ranges = observe(model, static, calibration, progress=progress)
        orders = {}
        if (rep := PegPermute(tuple(static), ranges)(model)).modified:
            orders = peg_orders(rep, static)
            for fam in rep.families:
                log.info("PEG permutation folded for %s: %d initializers, %d gather(s) left%s",
                         ", ".join(fam["sites"]), fam["params"], len(fam["gathers"]),
                         "".join(f"\n  {where}: {why}" for where, why in fam["gathers"]))
            model.metadata_props["lowbit.peg"] = json.dumps(
                [{k: fam[k] for k in ("sites", "channels", "params", "gathers")}
                 for fam in rep.families])
        qparams = calibrate_qparams(static, ranges, orders)
    InsertQDQ(recipe, qparams)(model)
    for name, why in plan.skipped:
        log.warning("not quantized: %s: %s", name, why)
    model.metadata_props["lowbit.recipe"] = recipe.name
    if plan.skipped:
        model.metadata_props["lowbit.skipped"] = json.dumps(plan.skipped)
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
