"""Exports of quantized graphs to other formats: ``onnx`` (standard QDQ ONNX, opset 21)."""
