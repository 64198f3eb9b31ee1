"""Standard QDQ ONNX export of quantized FX graphs, and onnxruntime reference execution.

``export_onnx`` re-exports a converted graph (``lowbit.passes.fx.convert_qdq``) with
``torch.onnx.export(dynamo=True)`` at opset 21 and these translations:

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
falls within an ulp of a rounding tie, i.e. one step, rarely (``qdq_agreement`` measures it).
``DequantizeLinear`` computes ``(q - z) * s`` exactly as torch does.

After export the ONNX model is cleaned (integers move, no value changes):

    weight DequantizeLinear reads initializers: Cast(initializer) on its scale / zero point
        is folded into a new initializer (QuantizeLinear on a constant is refused: weights
        arrive pre-quantized);
    Transpose(DequantizeLinear(W)) from ``linear`` -> DequantizeLinear(W^T) with the axis (and
        blocked scales) moved, so the DequantizeLinear feeds MatMul as onnxruntime's weight
        kernels expect (DQ -> MatMul becomes MatMulNBits, blocked int4 included);
    4-bit weights: a weight DequantizeLinear whose grid fits [-8, 7] (signed) or [0, 15]
        (unsigned), e.g. the restricted int4 grid [-7, 7], gets a real INT4 / UINT4 initializer
        (onnx packs two values per byte) and a zero point of the same type.

The grid comes from the FX op's ``quant_min`` / ``quant_max``, kept on each DequantizeLinear
as ``metadata_props["lowbit.quant_min" / "lowbit.quant_max"]``; the integer data is checked
against it. The file is checked (``onnx.checker`` with ``full_check``) and written atomically.

``OrtRunner`` runs the file on onnxruntime's CPU provider (``strict`` by default: see there);
``qdq_agreement`` counts how many output steps two results are apart.
"""

from __future__ import annotations

import logging
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed ops
from onnxscript.onnx_opset import opset21 as op

from lowbit import hostcpu
from lowbit.errors import ConfigError, LowbitError

__all__ = ["TRANSLATIONS", "OnnxExportError", "OrtRunner", "export_onnx", "ort_u8s8_exact",
           "per_axis_activation_matmul", "qdq_agreement", "run_onnx"]

log = logging.getLogger("lowbit.backends.onnxruntime")

qd = torch.ops.quantized_decomposed
_F32, _F64, _I64 = ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.INT64
QMIN_KEY, QMAX_KEY = "lowbit.quant_min", "lowbit.quant_max"
# Above this many bytes of initializers the model is saved with external data (protobuf's
# hard limit is 2 GiB for one message; leave room for the graph itself).


class OnnxExportError(LowbitError):
    """torch.onnx.export or the QDQ clean-up could not produce a valid ONNX model."""


# ---- translations (onnxscript, traced) -----------------------------------------------------
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


# ---- clean-up of the exported model ---------------------------------------------------------
def _const_array(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    t = ir.convenience.get_const_tensor(v)
    return None if t is None else t.numpy()


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray,
                     dtype: ir.DataType) -> ir.Value:
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs}
    unique, i = name, 0
    while unique in taken:
        i += 1
        unique = f"{name}_{i}"
    value = ir.Value(name=unique, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                     const_value=ir.Tensor(array, dtype=dtype, name=unique))
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    if value is not None and value.is_initializer() and not value.uses() \
            and not value.is_graph_output():
        graph.initializers.pop(value.name)


def _dq_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.op_type == "DequantizeLinear" and n.domain == ""]


def fold_dq_param_casts(graph: ir.Graph) -> int:
    """``DequantizeLinear(W, Cast(s_init), Cast(z_init))`` -> ``DequantizeLinear(W, s', z')``
    with ``s'``, ``z'`` new initializers (the exporter's optimizer does this for small tensors;
    this catches the ones over its size limit). Returns the number of Casts folded."""
    folded = 0
    for node in _dq_nodes(graph):
        for i in (1, 2):
            v = node.inputs[i] if len(node.inputs) > i else None
            cast = v.producer() if v is not None else None
            if cast is None or cast.op_type != "Cast" or not cast.inputs[0].is_initializer():
                continue
            src = cast.inputs[0]
            to = ir.DataType(cast.attributes["to"].as_int())
            arr = _const_array(src)
            if arr is None:
                continue
            new = add_initializer(graph, f"{src.name}_{to.name.lower()}", arr.astype(to.numpy()),
                                   to)
            node.replace_input_with(i, new)
            if not cast.outputs[0].uses():
                graph.remove(cast, safe=True)
                drop_if_unused(graph, src)
            folded += 1
    return folded


def fold_weight_transposes(graph: ir.Graph) -> int:
    """``Transpose(DequantizeLinear(W, s, z, axis=a), perm)`` -> ``DequantizeLinear(W^T, ...)``.

    torch's ``linear`` exports as ``MatMul(x, Transpose(dq(W[N, K])))``; storing ``W^T`` (and,
    for blocked scales, ``s^T`` and ``z^T``) makes the DequantizeLinear feed the MatMul
    directly, the form onnxruntime fuses into its int4 / int8 weight kernels (MatMulNBits).
    Integers move, no value changes: ``axis' = perm.index(a)``. Only when the weight and the
    dequantized tensor have no other reader. Returns the number folded."""
    folded = 0
    for dq in _dq_nodes(graph):
        x, y = dq.inputs[0], dq.outputs[0]
        users = [u.node for u in y.uses()]
        if len(users) != 1 or users[0].op_type != "Transpose" or y.is_graph_output() \
                or users[0].outputs[0].is_graph_output() or not x.is_initializer() \
                or len(x.uses()) != 1 or _const_array(x) is None:
            continue
        tr, arr = users[0], _const_array(x)
        perm = list(tr.attributes["perm"].as_ints()) if "perm" in tr.attributes \
            else list(range(arr.ndim))[::-1]
        params = {i: dq.inputs[i] for i in (1, 2) if len(dq.inputs) > i and dq.inputs[i]}
        blocked = dq.attributes.get_int("block_size", 0) > 0
        if blocked and any(_const_array(v) is None for v in params.values()):
            continue
        x.const_value = ir.Tensor(np.ascontiguousarray(arr.transpose(perm)), dtype=x.dtype,
                                  name=x.name)
        x.shape = ir.Shape(x.const_value.shape)
        if blocked:  # scales / zero points have the weight's rank: transpose them alike
            for i, v in params.items():
                moved = np.ascontiguousarray(_const_array(v).transpose(perm))
                if v.is_initializer() and len(v.uses()) == 1:
                    v.const_value = ir.Tensor(moved, dtype=v.dtype, name=v.name)
                    v.shape = ir.Shape(moved.shape)
                else:
                    name = f"{x.name}_{'scale' if i == 1 else 'zero_point'}"
                    dq.replace_input_with(i, add_initializer(graph, name, moved, v.dtype))
        if blocked or (1 in params and params[1].shape is not None and params[1].shape.rank()):
            axis = dq.attributes.get_int("axis", 1) % arr.ndim
            dq.attributes["axis"] = ir.AttrInt64("axis", perm.index(axis))
        y.shape = tr.outputs[0].shape
        ir.convenience.replace_all_uses_with(tr.outputs[0], y)
        graph.remove(tr, safe=True)
        folded += 1
    return folded


def _int4_target(node: ir.Node) -> ir.DataType | None:
    """INT4 / UINT4 when the DequantizeLinear reads an int8 / uint8 initializer whose declared
    grid fits 4 bits; None otherwise."""
    x = node.inputs[0]
    lo, hi = node.metadata_props.get(QMIN_KEY), node.metadata_props.get(QMAX_KEY)
    if lo is None or hi is None or not x.is_initializer():
        return None
    lo, hi = int(lo), int(hi)
    if x.dtype == ir.DataType.INT8 and -8 <= lo and hi <= 7:
        return ir.DataType.INT4
    if x.dtype == ir.DataType.UINT8 and 0 <= lo and hi <= 15:
        return ir.DataType.UINT4
    return None


def _as_4bit(name: str, arr: np.ndarray, target: ir.DataType, what: str) -> ir.Tensor:
    lo, hi = (-8, 7) if target == ir.DataType.INT4 else (0, 15)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise OnnxExportError(f"{what} {name!r} is declared {target.name} but holds values in "
                              f"[{arr.min()}, {arr.max()}], outside [{lo}, {hi}]")
    return ir.Tensor(arr.astype(np.int8 if target == ir.DataType.INT4 else np.uint8),
                     dtype=target, name=name)


def pack_int4_weights(graph: ir.Graph) -> int:
    """Store 4-bit weights as INT4 / UINT4 initializers (zero points converted alike).

    A weight initializer is converted only when every reader is a DequantizeLinear whose grid
    fits 4 bits; its values (and its zero points) are checked against the 4-bit range.
    Returns the number of weights converted."""
    converted = 0
    for node in _dq_nodes(graph):
        x, target = node.inputs[0], _int4_target(node)
        if target is None:
            continue
        if x.dtype != target:
            if any(u.node.op_type != "DequantizeLinear" or u.idx != 0
                   or _int4_target(u.node) != target for u in x.uses()):
                log.info("keeping %s as %s: read by a node that is not 4-bit", x.name, x.dtype)
                continue
            x.const_value = _as_4bit(x.name, _const_array(x), target, "weight")
            x.dtype = target
            converted += 1
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if zp is None or zp.dtype == target:
            continue
        arr = _const_array(zp)
        if arr is None:
            raise OnnxExportError(f"zero point of 4-bit weight {x.name!r} is not a constant")
        if zp.is_initializer() and len(zp.uses()) == 1:
            zp.const_value = _as_4bit(zp.name, arr, target, "zero point")
            zp.dtype = target
        else:  # shared (the exporter dedups equal constants): give this weight its own
            arr = _as_4bit(zp.name, arr, target, "zero point").numpy()
            node.replace_input_with(2, add_initializer(graph, f"{x.name}_zero_point", arr,
                                                        target))
            if zp.producer() is not None and not zp.uses():
                graph.remove(zp.producer(), safe=True)
            drop_if_unused(graph, zp)
    return converted


# ---- export --------------------------------------------------------------------------------
def _split_example(example_inputs: Any) -> tuple[tuple, dict]:
    ex = example_inputs
    if isinstance(ex, Mapping):
        return (), dict(ex)
    if isinstance(ex, torch.Tensor):
        return (ex,), {}
    if (isinstance(ex, tuple) and len(ex) == 2 and isinstance(ex[0], (tuple, list))
            and isinstance(ex[1], Mapping)):
        return tuple(ex[0]), dict(ex[1])  # the (args, kwargs) pair lowbit.capture stores
    if isinstance(ex, (tuple, list)):
        return tuple(ex), {}
    raise ConfigError(f"example_inputs must be a tensor, a tuple of positional inputs, a dict of "
                      f"keyword inputs or an (args, kwargs) pair, got {type(ex).__name__}")


def export_onnx(qgm: torch.nn.Module, path: str | os.PathLike, example_inputs: Any = None, *,
                dynamic_shapes: Any = None, opset: int = 21) -> pathlib.Path:
    """Export a quantized FX graph to a standard QDQ ONNX file (see the module docstring).

    Args:
        qgm: the converted GraphModule (``quantized_decomposed`` q/dq ops); not modified.
        path: the ``.onnx`` file to write; replaced atomically, never left half-written.
        example_inputs: inputs to trace with; defaults to those ``lowbit.capture`` stored in
            ``qgm.meta["lowbit_example_inputs"]``.
        dynamic_shapes: as for ``torch.export``; defaults to ``qgm.meta["lowbit_dynamic_shapes"]``.
        opset: 21 or later (INT4 and blocked DequantizeLinear need 21).

    Returns:
        The path written.

    Raises:
        ConfigError: no example inputs, or an opset below 21.
        OnnxExportError: torch.onnx.export failed, or the result fails onnx.checker.
    """
    if not isinstance(opset, int) or opset < 21:
        raise ConfigError(f"export_onnx: opset must be >= 21 (INT4 weights and blocked "
                          f"DequantizeLinear need it), got {opset!r}")
    meta = getattr(qgm, "meta", {}) or {}
    if example_inputs is None:
        example_inputs = meta.get("lowbit_example_inputs")
        if example_inputs is None:
            raise ConfigError("export_onnx: no example_inputs given and the graph carries none "
                              "(graphs from lowbit.capture keep theirs in "
                              "meta['lowbit_example_inputs']); pass example_inputs=")
    args, kwargs = _split_example(example_inputs)
    if dynamic_shapes is None:
        # the capture's dynamic shapes, when the example has the capture's structure
        captured = meta.get("lowbit_dynamic_shapes")
        c_args, c_kwargs = _split_example(meta.get("lowbit_example_inputs") or ((), {}))
        if captured is not None and len(c_args) == len(args) and set(c_kwargs) == set(kwargs):
            dynamic_shapes = captured
    path = pathlib.Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*training mode.*")
            program = torch.onnx.export(
                qgm, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                dynamic_shapes=dynamic_shapes, custom_translation_table=TRANSLATIONS,
                optimize=True, verbose=False)
    except Exception as e:  # torch raises many types; all mean "could not export"
        reason = "\n    ".join(str(e).strip().splitlines()[:12]) or type(e).__name__
        raise OnnxExportError(f"torch.onnx.export failed for {type(qgm).__name__}: "
                              f"{type(e).__name__}:\n    {reason}") from e
    model = program.model
    graph = model.graph
    folded = fold_dq_param_casts(graph)
    transposed = fold_weight_transposes(graph)
    packed = pack_int4_weights(graph)
    _check_weight_dqs(graph)
    log.info("export_onnx: %d DequantizeLinear, %d QuantizeLinear; folded %d Cast(s) and %d "
             "Transpose(s); %d INT4/UINT4 weight(s)", len(_dq_nodes(graph)),
             sum(n.op_type == "QuantizeLinear" for n in graph), folded, transposed, packed)
    try:
        from lowbit.passes.onnx.load import save_onnx  # lazy: that package imports this one

        save_onnx(model, path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxExportError(f"exported model fails onnx.checker: {e}") from e
    return path


def _check_weight_dqs(graph: ir.Graph) -> None:
    """No QuantizeLinear may read a constant (weights arrive pre-quantized), and every weight
    DequantizeLinear must read its scale / zero point from initializers."""
    for node in graph:
        if node.op_type == "QuantizeLinear" and _const_array(node.inputs[0]) is not None:
            raise OnnxExportError(f"{node.name}: QuantizeLinear on a constant float tensor; "
                                  f"weights should arrive pre-quantized (ConvertToQDQ)")
        if node.op_type == "DequantizeLinear" and node.inputs[0].is_initializer():
            for v in node.inputs[1:]:
                if v is not None and not v.is_initializer() and v.producer() is not None \
                        and v.producer().op_type != "Constant":
                    raise OnnxExportError(
                        f"{node.name}: weight {node.inputs[0].name!r} dequantized with a "
                        f"computed {v.name!r} ({v.producer().op_type}); expected an initializer")


# ---- reference execution -------------------------------------------------------------------
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_ORT_TO_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_}


def per_axis_activation_matmul(model: str | os.PathLike | onnx.ModelProto | bytes) -> bool:
    """Whether a DequantizeLinear of a computed tensor (not an initializer) with a per-axis
    scale feeds a MatMul or Gemm (see ``OrtRunner``)."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def per_axis(name: str) -> bool:
        if name in inits:
            return int(np.prod(inits[name].dims)) > 1
        node = consts.get(name)
        return node is not None and any(int(np.prod(a.t.dims)) > 1 for a in node.attribute
                                        if a.name == "value")

    readers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    return any(n.op_type == "DequantizeLinear" and n.input[0] not in inits
               and len(n.input) > 1 and per_axis(n.input[1])
               and any(op in ("MatMul", "Gemm") for op in readers.get(n.output[0], []))
               for n in g.node)


class OrtRunner:
    """An onnxruntime CPU session over an exported model, fed by name.

        runner = OrtRunner("model.qdq.onnx", threads=2)
        logits, = runner(input_ids=ids, attention_mask=mask)      # or runner.run({...})

    ``optimization`` is onnxruntime's graph optimization level: "all" (default, what
    deployments use; QDQ around MatMul becomes integer kernels, which agree with the QDQ math
    to within rounding only where ``ort_u8s8_exact()``: see there) down to "disable" (the QDQ
    graph op by op: DequantizeLinear, float MatMul; no integer kernel, so the same numbers on
    every host up to float summation order). ``threads`` sets ``intra_op_num_threads`` (None:
    onnxruntime's default).

    ``strict`` (default True) turns off the two onnxruntime rewrites that change the exported
    model's numbers beyond rounding of the same math: the weight-only DQ -> MatMulNBits fusion
    at its default ``accuracy_level`` 4, which quantizes *float* activations to int8 (seen:
    15 output steps off; strict asks for level 1, float32 compute), and DivMulFusion, which
    turns torch's ``x * (1 / s)`` into ``x / s`` and so moves per-token integers on ties.
    ``strict=False`` runs onnxruntime exactly as deployed. ``strict`` does not reach the u8 x s8
    integer kernel itself, which saturates on hosts without VNNI (``ort_u8s8_exact``).

    PEG files: onnxruntime (seen with 1.31) rewrites ``DequantizeLinear -> MatMul`` into
    ``MatMulIntegerToFloat`` without checking that the activation is quantized per tensor, and
    that kernel then fails at run time on a per-axis activation zero point ("Per-Channel is not
    supported yet"). When the model has a per-axis activation DequantizeLinear feeding a
    MatMul (a PEG linear input), the runner turns off onnxruntime's QDQ fusion
    (``QDQSelectorActionTransformer``) for that session, logged, whatever ``strict`` says;
    the QDQ math then runs op by op (onnxruntime has no per-channel-activation integer GEMM).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto | bytes,
                 threads: int | None = None, *, optimization: str = "all",
                 strict: bool = True) -> None:
        import onnxruntime as ort

        if optimization not in _OPT_LEVELS:
            raise ConfigError(f"OrtRunner.optimization must be one of {sorted(_OPT_LEVELS)}, "
                              f"got {optimization!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"OrtRunner.threads must be a positive int or None, got {threads!r}")
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                              _OPT_LEVELS[optimization])
        if threads is not None:
            so.intra_op_num_threads = threads
        disabled = []
        if strict:
            so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
            disabled = ["DivMulFusion"]
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else \
            model if isinstance(model, bytes) else str(model)
        if per_axis_activation_matmul(model):
            log.info("OrtRunner: per-axis activation DequantizeLinear feeds a MatMul (PEG); "
                     "onnxruntime's QDQ fusion is turned off for this session")
            disabled = disabled + ["QDQSelectorActionTransformer"]
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=disabled)
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        if args and kwargs:
            raise ConfigError("OrtRunner: pass inputs by position or by name, not both")
        if args:
            if len(args) != len(self.inputs):
                raise ConfigError(f"OrtRunner: {len(args)} positional input(s) for a model "
                                  f"that takes {len(self.inputs)}: {self.input_names}")
            kwargs = dict(zip(self.inputs, args))
        return self.run(kwargs)

    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """Run on ``{input name: array}``; returns the outputs in the model's order."""
        missing = [n for n in self.inputs if n not in inputs]
        extra = [n for n in inputs if n not in self.inputs]
        if missing or extra:
            raise ConfigError(f"OrtRunner: inputs do not match the model's "
                              f"{self.input_names}: missing {missing}, unexpected {extra}")
        feed = {}
        for name, value in inputs.items():
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) \
                else np.asarray(value)
            want = _ORT_TO_NP.get(self.inputs[name])
            if want is not None and arr.dtype != want:
                raise ConfigError(f"OrtRunner: input {name!r} is {arr.dtype}, the model wants "
                                  f"{self.inputs[name]}")
            feed[name] = arr
        return self.session.run(None, feed)


def run_onnx(path: str | os.PathLike, inputs: Mapping[str, np.ndarray | torch.Tensor],
             *, threads: int | None = None) -> list[np.ndarray]:
    """One-shot ``OrtRunner(path, threads).run(inputs)``."""
    return OrtRunner(path, threads).run(inputs)


def ort_u8s8_exact(features: frozenset[str] | None = None) -> bool:
    """Whether onnxruntime's u8 x s8 integer GEMM is exact on this host (``features``: x86
    flags as ``lowbit.hostcpu.host_x86_features`` names them; the host's by default).

    With ``optimization="all"`` a QDQ MatMul with u8 activations and s8 weights becomes QGemm /
    MatMulIntegerToFloat on MLAS's u8s8 kernel, which MLAS picks from CPUID when onnxruntime
    loads (``core/mlas/lib/platform.cpp``, onnxruntime 1.32; the last line that applies wins):

        AVX2                            vpmaddubsw: u8*s8 pairs summed in int16, saturating
        + AVX-VNNI      (avx_vnni)      vpdpbusd: int32 sums, exact
        + AVX-512 F/BW/DQ/VL            vpmaddubsw again (the AVX512Core kernel): saturating
        + AVX512_VNNI   (avx512_vnni)   vpdpbusd: exact
        + AMX-TILE and AMX-INT8         tdpbusd: exact

    A pair of 255 * 127 sums to 64770 > 32767, and the excess is lost: outputs move by many
    steps (37 on a Zen 3, AVX2 only, in ``tests/backends/test_onnxruntime.py``). So: exact on
    Cascade Lake and later Xeons, Alder Lake and later cores, Zen 4 and later; not on Haswell
    to Skylake (Skylake-SP's AVX-512 included) nor Zen 1 to 3. Empty ``features`` (not Linux,
    not x86): False, assume inexact. ``optimization="disable"`` never runs this kernel and is
    exact everywhere.
    (onnxruntime's ``session.x64quantprecision=1``, which moves such weights to the exact u8u8
    kernel, fixes the small test model but fails to load real QDQ models in 1.32: "Attempt to
    replace the existing tensor".)
    """
    f = hostcpu.host_x86_features() if features is None else frozenset(features)
    if {"amx_tile", "amx_int8"} <= f:
        return True
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f:
        return "avx512_vnni" in f
    return {"avx2", "avx_vnni"} <= f


# ---- agreement -----------------------------------------------------------------------------
# A difference of exactly one step, computed in float32, can read as 1 + a few ulp steps.
STEP_SLACK = 1e-3


def qdq_agreement(fx_out: Any, onnx_out: Any, scale: Any) -> dict[str, float]:
    """How far two outputs on the same quantization grid are apart, in steps of ``scale``.

    Returns ``max_steps`` (max |diff| / scale), ``off_by_one`` (fraction of elements more than
    half a step apart) and ``off_by_more`` (fraction more than one step apart, with a
    ``STEP_SLACK`` allowance for float rounding of the dequantized values), and ``n``.
    ``scale`` is a number or an array broadcastable to the outputs (per-token scales).
    """
    def arr(x: Any) -> np.ndarray:
        return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                ).astype(np.float64)

    a, b, s = arr(fx_out), arr(onnx_out), arr(scale)
    if a.shape != b.shape:
        raise ValueError(f"qdq_agreement: shapes differ: {a.shape} vs {b.shape}")
    if np.any(s <= 0):
        raise ValueError("qdq_agreement: scale must be positive")
    steps = np.abs(a - b) / s
    n = steps.size
    return {
        "max_steps": float(steps.max()) if n else 0.0,
        "off_by_one": float(np.count_nonzero(steps > 0.5) / n) if n else 0.0,
        "off_by_more": float(np.count_nonzero(steps > 1.0 + STEP_SLACK) / n) if n else 0.0,
        "n": n,
    }
