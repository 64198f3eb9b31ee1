"""Transformer spotting on ONNX graphs: ``lowbit.passes.spot`` (the algorithm, once for every
IR) over ``lowbit.passes.view.onnx.OnnxView``. Kept as the ONNX import path."""

from lowbit.passes.spot import find_transformer

__all__ = ["find_transformer"]
