"""The lowbit passes over ONNX graphs (onnx_ir), with the same names as ``lowbit.passes.fx``.

    model = load_onnx("model.onnx")                 # checked: opset, external data
    tmap = find_transformer(model)                  # the same TransformerMap as on FX
    qmodel = quantize_onnx(model, recipes.W8A8, calibration=batches, out="model.qdq.onnx")
"""

from lowbit.passes.onnx.api import quantize_onnx, quantize_onnx_file
from lowbit.passes.onnx.calibrate import calibrate
from lowbit.passes.onnx.fold_channel_scales import FoldChannelScales
from lowbit.passes.onnx.insert_qdq import InsertQDQ, Plan, Site, plan_sites
from lowbit.passes.onnx.load import OnnxModelError, load_onnx, save_onnx, upgrade_opset
from lowbit.passes.onnx.smoothquant import SmoothQuantScales, channel_absmax, smoothquant
from lowbit.passes.onnx.spot import find_transformer

__all__ = [
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
    "quantize_onnx",
    "quantize_onnx_file",
    "save_onnx",
    "smoothquant",
    "upgrade_opset",
]
