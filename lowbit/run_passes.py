"""Running a technique's passes on a user's model without touching it: the one place the
public entry points (``quantize_words``, ``tensor_train``, ``materialize_tt``) share.

    gm = run_fx(model, [PassA(...), PassB(...)], "name (FX)")          # on a deep copy
    m = run_onnx(model, lambda opset: [...], min_opset, "name (ONNX)", out=path)

``run_onnx`` takes an ``onnx_ir.Model`` (cloned) or a path, raises its default-domain opset to
at least ``min_opset`` first (``UpgradeOpset``), and writes the result atomically to ``out``
when given (external data kept where the input had it). Both put the pipeline's report in
``meta["lowbit_pipeline"]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lowbit.passes.infra import Pass, Pipeline
from lowbit.warning_filters import copy_graph

__all__ = ["run_fx", "run_onnx"]


def run_fx(model: Any, passes: Sequence[Pass], name: str) -> Any:
    pipeline = Pipeline(list(passes), name=name)
    gm = pipeline(copy_graph(model)).graph
    gm.meta["lowbit_pipeline"] = pipeline.report
    return gm


def run_onnx(model: Any, passes: Sequence[Pass], min_opset: int, name: str,
             out: str | os.PathLike | None = None) -> Any:
    import onnx_ir as ir

    from lowbit.onnx_quantize import UpgradeOpset
    from lowbit.passes.onnx.load import has_external_data, load_onnx, save_onnx

    m = model.clone() if isinstance(model, ir.Model) else load_onnx(model)
    external = has_external_data(m)
    opset = max(min_opset, int(m.opset_imports.get("", min_opset)))
    pipeline = Pipeline([UpgradeOpset(opset), *passes], name=name)
    m = pipeline(m).graph
    m.meta["lowbit_pipeline"] = pipeline.report
    if out is not None:
        save_onnx(m, out, external_data=external or None)
    return m
