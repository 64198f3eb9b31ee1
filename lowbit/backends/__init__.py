"""Backends: ``onnxruntime`` (standard QDQ ONNX export and reference execution) and ``tvm``.

Nothing is imported here on purpose: each backend pulls in a heavy runtime, so import the one
you use (``from lowbit.backends.onnxruntime import export_onnx``).
"""
