"""Clean-ups of a QDQ ONNX graph: integers move, no value changes.

Run by ``lowbit.export.onnx.export_onnx`` on every exported model (all three) and by
``InsertQDQ`` on the graphs it quantizes (the last two), as functions returning a count or as
``Pass`` classes (``modified`` = something moved; a second run moves nothing):

    FoldDQParamCasts       DequantizeLinear(W, Cast(s_init), Cast(z_init))
                             -> DequantizeLinear(W, s', z'),  s', z' new initializers
                           (QuantizeLinear on a constant is refused at export: weights arrive
                           pre-quantized)
    FoldWeightTransposes   Transpose(DequantizeLinear(W, s, z, axis=a), perm)
                             -> DequantizeLinear(W^T, s[^T], z[^T], axis=perm.index(a))
                           torch's ``linear`` exports as MatMul(x, Transpose(dq(W))); with the
                           DequantizeLinear feeding MatMul directly onnxruntime fuses it into its
                           weight kernels (DQ -> MatMul becomes MatMulNBits, blocked int4 too)
    PackInt4Weights        a weight DequantizeLinear whose grid fits [-8, 7] (signed) or
                           [0, 15] (unsigned), e.g. the restricted int4 grid [-7, 7], gets a real
                           INT4 / UINT4 initializer (onnx packs two values per byte) and a zero
                           point of the same type

The grid comes from the FX op's ``quant_min`` / ``quant_max``, kept on each DequantizeLinear as
``metadata_props[qdq_ops.QMIN_KEY / QMAX_KEY]``; the integer data is checked against it
(OnnxExportError when it does not fit).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from lowbit.errors import OnnxExportError
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.edit import add_initializer, dq_nodes, drop_if_unused
from lowbit.passes.onnx.graph_utils import const_array
from lowbit.passes.onnx.qdq_ops import QMAX_KEY, QMIN_KEY

__all__ = ["QDQ_CLEANUP", "CountResult", "FoldDQParamCasts", "FoldWeightTransposes",
           "PackInt4Weights", "fold_dq_param_casts", "fold_weight_transposes",
           "pack_int4_weights"]

log = logging.getLogger("lowbit.passes.onnx")


def fold_dq_param_casts(graph: ir.Graph) -> int:
    """``DequantizeLinear(W, Cast(s_init), Cast(z_init))`` -> ``DequantizeLinear(W, s', z')``
    with ``s'``, ``z'`` new initializers (the exporter's optimizer does this for small tensors;
    this catches the ones over its size limit). Returns the number of Casts folded."""
    folded = 0
    for node in dq_nodes(graph):
        for i in (1, 2):
            v = node.inputs[i] if len(node.inputs) > i else None
            cast = v.producer() if v is not None else None
            if cast is None or cast.op_type != "Cast" or not cast.inputs[0].is_initializer():
                continue
            src = cast.inputs[0]
            to = ir.DataType(cast.attributes["to"].as_int())
            arr = const_array(src)
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
    for dq in dq_nodes(graph):
        x, y = dq.inputs[0], dq.outputs[0]
        users = [u.node for u in y.uses()]
        if len(users) != 1 or users[0].op_type != "Transpose" or y.is_graph_output() \
                or users[0].outputs[0].is_graph_output() or not x.is_initializer() \
                or len(x.uses()) != 1 or const_array(x) is None:
            continue
        tr, arr = users[0], const_array(x)
        perm = list(tr.attributes["perm"].as_ints()) if "perm" in tr.attributes \
            else list(range(arr.ndim))[::-1]
        params = {i: dq.inputs[i] for i in (1, 2) if len(dq.inputs) > i and dq.inputs[i]}
        blocked = dq.attributes.get_int("block_size", 0) > 0
        if blocked and any(const_array(v) is None for v in params.values()):
            continue
        x.const_value = ir.Tensor(np.ascontiguousarray(arr.transpose(perm)), dtype=x.dtype,
                                  name=x.name)
        x.shape = ir.Shape(x.const_value.shape)
        if blocked:  # scales / zero points have the weight's rank: transpose them alike
            for i, v in params.items():
                moved = np.ascontiguousarray(const_array(v).transpose(perm))
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


def _pack_int4(graph: ir.Graph) -> tuple[int, int]:
    converted = zero_points = 0
    for node in dq_nodes(graph):
        x, target = node.inputs[0], _int4_target(node)
        if target is None:
            continue
        if x.dtype != target:
            if any(u.node.op_type != "DequantizeLinear" or u.idx != 0
                   or _int4_target(u.node) != target for u in x.uses()):
                log.info("keeping %s as %s: read by a node that is not 4-bit", x.name, x.dtype)
                continue
            x.const_value = _as_4bit(x.name, const_array(x), target, "weight")
            x.dtype = target
            converted += 1
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if zp is None or zp.dtype == target:
            continue
        arr = const_array(zp)
        if arr is None:
            raise OnnxExportError(f"zero point of 4-bit weight {x.name!r} is not a constant")
        zero_points += 1
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
    return converted, zero_points


def pack_int4_weights(graph: ir.Graph) -> int:
    """Store 4-bit weights as INT4 / UINT4 initializers (zero points converted alike).

    A weight initializer is converted only when every reader is a DequantizeLinear whose grid
    fits 4 bits; its values (and its zero points) are checked against the 4-bit range.
    Returns the number of weights converted."""
    return _pack_int4(graph)[0]


@dataclasses.dataclass
class CountResult(PassResult):
    """PassResult plus how many things the clean-up moved."""

    count: int = 0


@dataclasses.dataclass(frozen=True)
class FoldDQParamCasts(Pass):
    """``fold_dq_param_casts`` as a pass over an ``onnx_ir.Model``."""

    in_place = True

    def call(self, model: ir.Model) -> CountResult:
        n = fold_dq_param_casts(model.graph)
        return CountResult(model, n > 0, n)


@dataclasses.dataclass(frozen=True)
class FoldWeightTransposes(Pass):
    """``fold_weight_transposes`` as a pass over an ``onnx_ir.Model``."""

    in_place = True

    def call(self, model: ir.Model) -> CountResult:
        n = fold_weight_transposes(model.graph)
        return CountResult(model, n > 0, n)


@dataclasses.dataclass(frozen=True)
class PackInt4Weights(Pass):
    """``pack_int4_weights`` as a pass over an ``onnx_ir.Model`` (``count``: weights
    converted; ``modified`` also when only a zero point was)."""

    in_place = True

    def call(self, model: ir.Model) -> CountResult:
        weights, zero_points = _pack_int4(model.graph)
        return CountResult(model, weights + zero_points > 0, weights)


QDQ_CLEANUP = (FoldDQParamCasts(), FoldWeightTransposes(), PackInt4Weights())
"""The clean-ups ``export_onnx`` runs, in order."""
