"""Graph passes: infrastructure, transformer maps, and one pass per file for each IR
(``fx/`` for torch.fx, ``onnx/`` for ONNX)."""
