"""Refuse a model whose weights hold NaN or inf before quantizing it, naming the weight.

Left alone, such a weight would reach the first activation observer as NaN and be reported as
bad calibration data ("NaN/inf value(s) in calibration batch 1") though the data are clean.
Checked: the parameters of a torch module or captured graph, and the float initializers of an
ONNX model (``onnx_ir.Model``) that hold more than one element (a lone ``-inf`` is a mask
constant, not a weight).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.errors import WeightError

__all__ = ["check_finite_weights"]


def check_finite_weights(model: Any) -> None:
    """Raise ``WeightError`` naming the first weight of ``model`` holding NaN or inf.

    ``model``: a ``torch.nn.Module`` (a captured ``fx.GraphModule`` too) or an
    ``onnx_ir.Model``; anything else is not checked."""
    if hasattr(model, "named_parameters"):
        for name, p in model.named_parameters():
            if p.is_floating_point() and not bool(p.detach().isfinite().all()):
                _refuse(name, p.detach().float().cpu().numpy())
    elif hasattr(model, "graph") and hasattr(model.graph, "initializers"):
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is None or not tensor.dtype.is_floating_point() or tensor.size <= 1:
                continue
            array = tensor.numpy()
            if not np.isfinite(array).all():
                _refuse(name, array)


def _refuse(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    where = [int(i) for i in np.argwhere(bad)[0]]
    raise WeightError(
        f"weight {name} holds {int(bad.sum())} NaN/inf value(s) (first {array[tuple(where)]} "
        f"at {where}): the model file is damaged or was saved from a diverged run; repair or "
        f"re-export the model (the calibration data are not the cause)")
