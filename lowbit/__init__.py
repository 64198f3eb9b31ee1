"""lowbit: compiler-style graph passes that quantize and compress transformer models and lower
them into Apache TVM integer kernels.

    gm = lowbit.capture(model, example_inputs)              # torch.export -> fx.GraphModule
    print(lowbit.find_transformer(gm))                      # the transformer structure
    qgm = lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=batches)
    lowbit.export_onnx(qgm, "model.qdq.onnx")               # standard QDQ ONNX
    qm = lowbit.quantize("model.onnx", "w8a8", calibration=feeds)   # ONNX in, ONNX out
    tgm = lowbit.tensor_train(gm, lowbit.config.TT(ranks=30, bits=8))   # TT cores (QAT)
"""

from lowbit import config, errors, recipes
from lowbit.capture import capture
from lowbit.passes.infra import Pass, PassResult, Pipeline, PipelineReport
from lowbit.passes.patterns import TransformerMap
from lowbit.quantize import calibrate, convert, freeze, prepare, quantize
from lowbit.apply_precision import apply_precision
from lowbit.mixed_precision import search_precision
from lowbit.mixed_precision_dnas import search_precision_dnas
from lowbit.quantize_words import quantize_words
from lowbit.tensor_train import materialize_tt, tensor_train

__version__ = "0.1.0"

__all__ = [
    "capture", "find_transformer", "quantize", "quantize_words", "tensor_train",
    "materialize_tt", "search_precision",
    "search_precision_dnas", "apply_precision", "prepare",
    "calibrate", "freeze", "convert",
    "export_onnx", "load_onnx", "quantize_onnx", "compile", "load", "Tune", "config", "errors",
    "recipes", "testing", "Pass", "PassResult", "Pipeline", "PipelineReport", "TransformerMap",
    "__version__",
]


def find_transformer(graph) -> TransformerMap:
    """Spot the transformer structure of a captured graph (FX GraphModule from ``capture``) or
    of an ONNX model (``load_onnx``); see lowbit.passes.spot."""
    from lowbit.passes.spot import find_transformer as _spot

    return _spot(graph)


def export_onnx(qgm, path, example_inputs=None, **kwargs):
    """Write a quantized GraphModule as standard QDQ ONNX (see lowbit.backends.onnxruntime)."""
    from lowbit.backends.onnxruntime import export_onnx as _export

    return _export(qgm, path, example_inputs, **kwargs)


def load_onnx(path):
    """Load an ONNX file as an onnx_ir Model (see lowbit.passes.onnx.load)."""
    from lowbit.passes.onnx.load import load_onnx as _load

    return _load(path)


def quantize_onnx(model, recipe, calibration=None, **kwargs):
    """Deprecated: ``lowbit.quantize`` takes ONNX models (paths, onnx_ir / onnx models)."""
    import warnings

    from lowbit.onnx_quantize import quantize_onnx as _q

    warnings.warn("lowbit.quantize_onnx is deprecated and will be removed in the next release: "
                  "use lowbit.quantize(model, recipe, calibration=...), which takes ONNX models",
                  DeprecationWarning, stacklevel=2)
    return _q(model, recipe, calibration, **kwargs)


def compile(graph, target="cpu", tune=None, **kwargs):
    """Compile a quantized (or float) graph to a TVM module (see lowbit.compiler)."""
    from lowbit.compiler import compile as _compile

    return _compile(graph, target, tune, **kwargs)


def load(path, **kwargs):
    """Load a compiled module saved with ``.save(dir)``, with the TVM runtime only."""
    from lowbit.compiler import load as _load

    return _load(path, **kwargs)


def __getattr__(name):
    import importlib

    if name == "testing":  # imported lazily: it pulls onnxruntime
        return importlib.import_module("lowbit.testing")
    if name == "Tune":  # imported lazily: TVM takes seconds to import
        return importlib.import_module("lowbit.backends.tvm.tune").Tune
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
