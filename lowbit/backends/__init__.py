"""Backends: ``onnxruntime`` (the reference runtime for QDQ ONNX files) and ``tvm``.

Nothing is imported here on purpose: each backend pulls in a heavy runtime, so import the one
you use (``from lowbit.backends.onnxruntime import OrtRunner``). The QDQ ONNX export is in
``lowbit.export.onnx``.
"""
