"""The ``quantized_decomposed`` ops in ONNX (opset 21): onnxscript translations, traced.

``lowbit.export.onnx.export_onnx`` hands ``TRANSLATIONS`` to ``torch.onnx.export`` as its
``custom_translation_table``; ``InsertQDQ`` runs the same functions through torch's op recorder,
so an ONNX-quantized graph and an FX-quantized, exported one hold the same ops:

    FX (quantized_decomposed)                        ONNX (opset 21)
    quantize_per_tensor(x, s, z, lo, hi, T)          QuantizeLinear(x, s, z_T) [-> Clip(lo, hi)]
    dequantize_per_tensor(q, s, z, ...)              DequantizeLinear(q, s, z_T)
    dequantize_per_channel(W, s[N], z[N], axis)      DequantizeLinear(W, s, z_T, axis)
    quantize_per_channel(x, s[C], z[C], axis)        QuantizeLinear(x, s, z_T, axis)  (PEG
                                                     activations along the hidden axis)
    dequantize_per_channel_group(W[N,K], s, z, g)    DequantizeLinear(W, s[N,K/g], z, axis=1,
                                                                      block_size=g)
    choose_qparams[_symmetric].tensor(x)             ReduceMin/ReduceMax/Div/Max/Round math
    quantize/dequantize_per_tensor.tensor(x, s, z)   QuantizeLinear / DequantizeLinear (s, z
                                                     computed at run time)
    choose_qparams_per_token[_asymmetric](x)         ReduceMax(|x|) / ... float math
    quantize_per_token(x, s, z)                      Cast(Clip(Round(x * (1 / s) + z)), int8)
    dequantize_per_token(q, s, z)                    (Cast(q) - z) * s

The Clip after QuantizeLinear appears only for grids narrower than the storage type (a 4-bit
activation stored in uint8): QuantizeLinear saturates to the type's range, torch to
``[quant_min, quant_max]``. Per-token ops are plain float math, not QDQ: ONNX has no per-token
dynamic QuantizeLinear (a per-axis QuantizeLinear over a [tokens, hidden] reshape divides by
``s`` where torch multiplies by ``1 / s`` - in float64 for the asymmetric form - so it would not
reproduce torch's rounding, and no runtime fuses that pattern anyway). The float math below
repeats torch's reference kernels operation for operation and in the same precision, so the
per-token integers agree bit for bit.

Where ONNX QDQ rounds differently from torch: ``QuantizeLinear`` computes ``round(x / s)``,
``quantize_per_tensor`` computes ``round(x * f32(1 / s))``; they differ only when ``x / s``
falls within an ulp of a rounding tie, i.e. one step, rarely
(``lowbit.backends.onnxruntime.qdq_agreement`` measures it). ``DequantizeLinear`` computes
``(q - z) * s`` exactly as torch does.

Each DequantizeLinear keeps its FX op's grid as ``metadata_props[QMIN_KEY / QMAX_KEY]``, which
``qdq_cleanup.PackInt4Weights`` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed ops
from onnxscript.onnx_opset import opset21 as op

import lowbit.quant.bcq_linear  # noqa: F401  registers lowbit::bcq_linear

__all__ = [
    "QMAX_KEY", "QMIN_KEY", "TRANSLATIONS", "choose_qparams_per_token",
    "choose_qparams_per_token_asymmetric", "choose_qparams_symmetric_tensor",
    "choose_qparams_tensor", "dequantize_per_channel", "dequantize_per_channel_group",
    "dequantize_per_tensor", "dequantize_per_token", "op", "quantize_per_channel",
    "quantize_per_tensor", "quantize_per_token",
]

qd = torch.ops.quantized_decomposed
_F32, _F64, _I64 = ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.INT64
QMIN_KEY, QMAX_KEY = "lowbit.quant_min", "lowbit.quant_max"


def _const(value: Any, dtype: ir.DataType) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype.numpy()), dtype=dtype))


def _cast(v: ir.Value, dtype: ir.DataType) -> ir.Value:
    return v if v.dtype == dtype else op.Cast(v, to=dtype)


def _scalar(v: Any, dtype: ir.DataType) -> ir.Value:
    """A per-tensor scale / zero point: a Python number, or a 1-element tensor (``.tensor``)."""
    if isinstance(v, ir.Value):
        return op.Reshape(_cast(v, dtype), _const([], _I64))
    return _const(v, dtype)


def _storage_range(dtype: ir.DataType) -> tuple[int, int]:
    info = np.iinfo(dtype.numpy())
    return int(info.min), int(info.max)


def _clip_to_grid(q: ir.Value, quant_min: int, quant_max: int, dtype: ir.DataType) -> ir.Value:
    if (quant_min, quant_max) == _storage_range(dtype):
        return q
    return op.Clip(q, _const(quant_min, dtype), _const(quant_max, dtype))


def _tag(y: ir.Value, quant_min: int, quant_max: int) -> ir.Value:
    node = y.producer()
    node.metadata_props[QMIN_KEY] = str(int(quant_min))
    node.metadata_props[QMAX_KEY] = str(int(quant_max))
    return y


def _out(y: ir.Value, out_dtype: Any) -> ir.Value:
    if out_dtype in (None, -1) or ir.DataType(out_dtype) == y.dtype:
        return y
    return op.Cast(y, to=ir.DataType(out_dtype))


def quantize_per_tensor(input, scale, zero_point, quant_min, quant_max, dtype):
    dtype = ir.DataType(dtype)
    q = op.QuantizeLinear(input, _scalar(scale, _F32), _scalar(zero_point, dtype))
    return _clip_to_grid(q, quant_min, quant_max, dtype)


def dequantize_per_tensor(input, scale, zero_point, quant_min, quant_max, dtype, out_dtype=None):
    dtype = ir.DataType(dtype)
    y = op.DequantizeLinear(input, _scalar(scale, _F32), _scalar(zero_point, dtype))
    y.dtype = _F32
    return _out(_tag(y, quant_min, quant_max), out_dtype)


def dequantize_per_channel(input, scales, zero_points, axis, quant_min, quant_max, dtype,
                           out_dtype=None):
    dtype = ir.DataType(dtype)
    zp = None if zero_points is None else _cast(zero_points, dtype)
    y = op.DequantizeLinear(input, _cast(scales, _F32), zp, axis=axis)
    y.dtype = _F32
    return _out(_tag(y, quant_min, quant_max), out_dtype)


def quantize_per_channel(input, scales, zero_points, axis, quant_min, quant_max, dtype):
    dtype = ir.DataType(dtype)
    q = op.QuantizeLinear(input, _cast(scales, _F32), _cast(zero_points, dtype), axis=axis)
    return _clip_to_grid(q, quant_min, quant_max, dtype)


def dequantize_per_channel_group(input, scales, zero_points, quant_min, quant_max, dtype,
                                 group_size, output_dtype):
    dtype = ir.DataType(dtype)
    n, k = input.shape[0], input.shape[-1]
    s = _cast(scales, _F32)
    zp = None if zero_points is None else _cast(zero_points, dtype)
    if scales.shape[-1] == 1 and group_size > k:
        group_size = k  # as torch: "needed for GPTQ single column dequantize"
    if len(scales.shape) != 2:  # torch accepts flat [N * K / g]; DequantizeLinear wants [N, K/g]
        rows = _const([n, -1], _I64)
        s, zp = op.Reshape(s, rows), (None if zp is None else op.Reshape(zp, rows))
    y = op.DequantizeLinear(input, s, zp, axis=1, block_size=int(group_size))
    y.dtype = _F32
    return _out(_tag(y, quant_min, quant_max), output_dtype)


def choose_qparams_per_token(input, dtype):
    # torch: s = clamp(amax(|x|, -1), min=1e-5) / 127 in float32; z = zeros_like(s), float32.
    # The FX meta says float64/int64, but the kernel that runs returns float32 (and the
    # quantize_per_token that follows then works in float32), so the ONNX types follow the
    # kernel; setting them here keeps the exporter from stamping the meta types on.
    amax = op.ReduceMax(op.Abs(input), _const([-1], _I64), keepdims=1)
    s = op.Div(op.Max(amax, _const(1e-5, _F32)), _const(127.0, _F32))
    z = op.ConstantOfShape(op.Shape(s), value=ir.tensor(np.zeros(1, np.float32)))
    s.dtype, z.dtype = _F32, _F32
    return s, z


def choose_qparams_per_token_asymmetric(input, dtype):
    # torch (XNNPACK scheme, float32, then s -> float64, z -> int64), qmin/qmax = -128/127:
    #   lo = min(amin(x), 0); hi = max(amax(x), 0); s = max((hi - lo) / 255, eps)
    #   z = round(clamp(qmin - lo/s if (qmin + lo/s) + (qmax + hi/s) > 0 else qmax - hi/s))
    axes, zero = _const([-1], _I64), _const(0.0, _F32)
    qmin, qmax = _const(-128.0, _F32), _const(127.0, _F32)
    lo = op.Min(op.ReduceMin(input, axes, keepdims=1), zero)
    hi = op.Max(op.ReduceMax(input, axes, keepdims=1), zero)
    s = op.Max(op.Div(op.Sub(hi, lo), _const(255.0, _F32)),
               _const(np.finfo(np.float32).eps, _F32))
    d_lo, d_hi = op.Div(lo, s), op.Div(hi, s)
    use_lo = op.Greater(op.Add(op.Add(qmin, d_lo), op.Add(qmax, d_hi)), zero)
    z = op.Where(use_lo, op.Sub(qmin, d_lo), op.Sub(qmax, d_hi))
    z = op.Round(op.Clip(z, qmin, qmax))
    s64, z64 = op.Cast(s, to=_F64), op.Cast(z, to=_I64)
    s64.dtype, z64.dtype = _F64, _I64
    return s64, z64


def quantize_per_token(input, scales, zero_points, quant_min, quant_max, dtype):
    # torch: x.mul(1.0 / s).add(z).round().clamp(qmin, qmax).to(dtype), in the scales' precision
    # (float32 after choose_qparams_per_token, float64 after the asymmetric one).
    ct = scales.dtype or _F32
    x = _cast(input, ct)
    y = op.Add(op.Mul(x, op.Div(_const(1.0, ct), scales)), _cast(zero_points, ct))
    y = op.Clip(op.Round(y), _const(quant_min, ct), _const(quant_max, ct))
    return op.Cast(y, to=ir.DataType(dtype))


def dequantize_per_token(input, scales, zero_points, quant_min, quant_max, dtype,
                         output_dtype=None):
    # torch: ((q - z) * s).to(output_dtype); q - z is exact in float32 and float64 alike.
    ct = scales.dtype or _F32
    y = op.Mul(op.Sub(op.Cast(input, to=ct), _cast(zero_points, ct)), scales)
    y.dtype = ct
    return _out(y, _F32 if output_dtype in (None, -1) else output_dtype)


def _choose_qparams_tensor(input, quant_min, quant_max, eps, dtype, symmetric: bool):
    # torch.ao determine_qparams (float32 math; returns s as float64 [1], z as int64 [1]):
    #   lo = min(amin(x), 0); hi = max(amax(x), 0)
    #   affine:    s = max((hi - lo) / (qmax - qmin), eps); z = clamp(qmin - round(lo / s))
    #   symmetric: s = max(max(-lo, hi) / ((qmax - qmin) / 2), eps); z = 128 for uint8 else 0
    dtype = ir.DataType(dtype)
    zero = _const(0.0, _F32)
    lo = op.Min(op.ReduceMin(input, keepdims=0), zero)
    hi = op.Max(op.ReduceMax(input, keepdims=0), zero)
    eps_1 = _const([eps], _F32)
    if symmetric:
        amax = op.Max(op.Neg(lo), hi)
        s = op.Max(op.Div(amax, _const((quant_max - quant_min) / 2, _F32)), eps_1)
        z = _const([128 if dtype == ir.DataType.UINT8 else 0], _I64)
    else:
        s = op.Max(op.Div(op.Sub(hi, lo), _const(float(quant_max - quant_min), _F32)), eps_1)
        z = op.Sub(_const(float(quant_min), _F32), op.Round(op.Div(lo, s)))
        z = op.Cast(op.Clip(z, _const(float(quant_min), _F32), _const(float(quant_max), _F32)),
                    to=_I64)
    s64 = op.Cast(s, to=_F64)
    s64.dtype, z.dtype = _F64, _I64
    return s64, z


def choose_qparams_tensor(input, quant_min, quant_max, eps, dtype):
    return _choose_qparams_tensor(input, quant_min, quant_max, eps, dtype, symmetric=False)


def choose_qparams_symmetric_tensor(input, quant_min, quant_max, eps, dtype):
    return _choose_qparams_tensor(input, quant_min, quant_max, eps, dtype, symmetric=True)


TRANSLATIONS = {
    qd.quantize_per_tensor.default: quantize_per_tensor,
    qd.quantize_per_tensor.tensor: quantize_per_tensor,
    qd.dequantize_per_tensor.default: dequantize_per_tensor,
    qd.dequantize_per_tensor.tensor: dequantize_per_tensor,
    qd.dequantize_per_channel.default: dequantize_per_channel,
    qd.quantize_per_channel.default: quantize_per_channel,
    qd.dequantize_per_channel_group.default: dequantize_per_channel_group,
    qd.choose_qparams_per_token.default: choose_qparams_per_token,
    qd.choose_qparams_per_token_asymmetric.default: choose_qparams_per_token_asymmetric,
    qd.quantize_per_token.default: quantize_per_token,
    qd.dequantize_per_token.default: dequantize_per_token,
    qd.choose_qparams.tensor: choose_qparams_tensor,
    qd.choose_qparams_symmetric.tensor: choose_qparams_symmetric_tensor,
}
"""quantized_decomposed op -> ONNX translation, passed as ``custom_translation_table``."""


# ---- lowbit::bcq_linear -> lowbit.BCQLinear (passes/onnx/bcq.py holds its decomposition) ----
_P = onnx.defs.OpSchema.FormalParameter
_BCQ_LINEAR = onnxscript.values.Op(
    onnxscript.values.Opset("lowbit", 1), "BCQLinear",
    onnx.defs.OpSchema("BCQLinear", "lowbit", 1, inputs=[
        _P("X", "tensor(float)"), _P("Planes", "tensor(uint8)"), _P("Alpha", "tensor(float)"),
        _P("Offset", "tensor(float)"), _P("Bias", "tensor(float)")],
        outputs=[_P("Y", "tensor(float)")]))


def bcq_linear(x, planes_u8, alpha_f32, offset_f32=None, bias_f32=None):
    """``lowbit::bcq_linear`` as the custom-domain node ``lowbit.BCQLinear`` with every input
    present (zeros for a missing offset [N, G] / bias [N]); ``export_onnx`` adds the node's
    decomposition (``lowbit.passes.onnx.bcq.bcq_function``) to the model."""
    zero = op.Constant(value=ir.tensor(np.zeros(1, np.float32)))
    if offset_f32 is None:
        offset_f32 = op.Expand(zero, op.Shape(alpha_f32, start=0, end=2))
    if bias_f32 is None:
        bias_f32 = op.Expand(zero, op.Shape(alpha_f32, start=0, end=1))
    return _BCQ_LINEAR(x, planes_u8, alpha_f32, offset_f32, bias_f32)


TRANSLATIONS[torch.ops.lowbit.bcq_linear.default] = bcq_linear
