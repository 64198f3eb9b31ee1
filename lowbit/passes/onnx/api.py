"""Deprecated: the ONNX entry point moved to ``lowbit.onnx_quantize`` (it calibrates in
onnxruntime, and passes may not import backends); call ``lowbit.quantize``. This module
re-exports ``quantize_onnx`` and ``quantize_onnx_file`` with a DeprecationWarning for one
release."""

from __future__ import annotations

import importlib
import warnings

__all__ = ["quantize_onnx", "quantize_onnx_file"]  # noqa: F822 (module __getattr__)


def __getattr__(name: str):
    if name in __all__:
        warnings.warn(f"lowbit.passes.onnx.api.{name} is deprecated and will be removed in the "
                      f"next release: use lowbit.quantize (or lowbit.onnx_quantize.{name})",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("lowbit.onnx_quantize"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
