"""The lowbit passes over ONNX graphs (onnx_ir), with the same names as ``lowbit.passes.fx``.

    model = load_onnx("model.onnx")                 # checked: opset, external data
    tmap = find_transformer(model)                  # the same TransformerMap as on FX
    qmodel = lowbit.quantize(model, recipes.W8A8, calibration=batches, out="model.qdq.onnx")

(``quantize_onnx`` / ``quantize_onnx_file`` moved to ``lowbit.onnx_quantize``, an entry point
that calibrates in onnxruntime; the names here still work, deprecated, for one release.)
"""

from lowbit.passes.onnx.bcq import QuantizeBCQ
from lowbit.passes.onnx.calibrate import calibrate
from lowbit.passes.onnx.fold_channel_scales import FoldChannelScales
from lowbit.passes.onnx.insert_qdq import InsertQDQ, Plan, Site, plan_sites
from lowbit.passes.onnx.load import OnnxModelError, load_onnx, save_onnx, upgrade_opset
from lowbit.passes.onnx.smoothquant import SmoothQuantScales, channel_absmax, smoothquant
from lowbit.passes.onnx.spot import find_transformer

__all__ = [
    "QuantizeBCQ",
    "FoldChannelScales",
    "InsertQDQ",
    "OnnxModelError",
    "Plan",
    "Site",
    "SmoothQuantScales",
    "calibrate",
    "channel_absmax",
    "find_transformer",
    "load_onnx",
    "plan_sites",
    "save_onnx",
    "smoothquant",
    "upgrade_opset",
]


def __getattr__(name: str):
    if name in ("quantize_onnx", "quantize_onnx_file"):   # moved out of passes/: deprecated
        import importlib
        import warnings

        warnings.warn(f"lowbit.passes.onnx.{name} is deprecated and will be removed in the next "
                      f"release: use lowbit.quantize (or lowbit.onnx_quantize.{name})",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("lowbit.onnx_quantize"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
