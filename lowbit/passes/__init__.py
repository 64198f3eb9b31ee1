"""Graph passes: infrastructure, transformer maps, graph views with the spotting written once
over them (``view/``, ``spot.py``), and one pass per file for each IR (``fx/`` for torch.fx,
``onnx/`` for ONNX)."""
