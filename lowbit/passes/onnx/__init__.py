"""The lowbit passes over ONNX graphs (onnx_ir), with the same names as ``lowbit.passes.fx``."""

from lowbit.passes.onnx.load import OnnxModelError, load_onnx, save_onnx, upgrade_opset
from lowbit.passes.onnx.spot import find_transformer

__all__ = ["OnnxModelError", "find_transformer", "load_onnx", "save_onnx", "upgrade_opset"]
