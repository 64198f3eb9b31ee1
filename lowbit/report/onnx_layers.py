"""The linears of a QDQ ONNX file and the tensors they read, with the formats read off the
Q/DQ nodes around each one (the ONNX twin of fx_layers.py)::

    MatMul(x, W) / Gemm(x, W[, C])     W [K, N], or [N, K] for Gemm transB=1
    lowbit.BCQLinear(x, Planes, Alpha, Offset, Bias)       Planes [q, N, K/8]

    weight  DequantizeLinear(W_q, s, z[, axis, block_size]) of an initializer, possibly through
            a Transpose: int<b> per channel / per tensor / groups of block_size, b from W_q's
            type; an initializer read directly: fp32 (its type)
    input   DequantizeLinear(QuantizeLinear(x, s, z), s, z), s and z initializers: u8 / i8
            per tensor, grid [(qmin - z) s, (qmax - z) s] (qmin, qmax of z's type), or per
            channel (PEG: G runs of equal scales); computed s: dynamic

A linear is named after its weight (``encoder.layer.0.attention.self.query.weight_i8`` ->
``encoder.layer.0.attention.self.query``); ``Linear.node`` is the name TVM's lowering log
gives it: the weight initializer (a BCQLinear: the node). A linear's input site is the tensor its QuantizeLinear reads.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lowbit.report.data import Linear, Site, block_of

__all__ = ["linear_tensors", "onnx_linears", "weight_chains"]

_BITS = {TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT4: 4, TensorProto.UINT4: 4,
         TensorProto.INT16: 16, TensorProto.UINT16: 16}
_GRID = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}
_FLOAT = {TensorProto.FLOAT: ("fp32", 32), TensorProto.FLOAT16: ("fp16", 16),
          TensorProto.BFLOAT16: ("bf16", 16)}
_THROUGH = ("Transpose", "Reshape", "Cast", "Identity")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _linear_name(weight: str) -> str:
    return re.sub(r"\.(weight|bcq)\w*$", "", weight)


def weight_chains(graph: onnx.GraphProto) -> dict[str, tuple[str, list]]:
    """``{linear node's output: (weight initializer, [the nodes from it to the linear])}`` for
    every MatMul / Gemm / BCQLinear whose right operand comes from an initializer."""
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "BCQLinear") or len(node.input) < 2:
            continue
        w, chain = node.input[1], []
        while w not in inits and w in producer and \
                producer[w].op_type in ("DequantizeLinear", *_THROUGH):
            chain.append(producer[w])
            w = producer[w].input[0]
        if w in inits:
            out[node.output[0]] = (w, chain)
    return out


def _weight(node, w: TensorProto, chain: list, inits: dict) -> tuple[str, float, int, int]:
    """(format, bits, K, N)."""
    if node.op_type == "BCQLinear":
        alpha = inits[node.input[2]]
        q, n, k = w.dims[0], w.dims[1], w.dims[2] * 8
        groups = alpha.dims[1]
        return (f"BCQ {q} planes, alpha per {'row' if groups == 1 else f'{k // groups} inputs'}",
                float(q), k, n)
    dims = list(w.dims)
    transposed = sum(n.op_type == "Transpose" for n in chain) % 2 == 1
    transposed ^= node.op_type == "Gemm" and bool(_attr(node, "transB", 0))
    k, n = (dims[1], dims[0]) if transposed else (dims[0], dims[-1])
    dq = next((c for c in chain if c.op_type == "DequantizeLinear"), None)
    if dq is None:
        name, bits = _FLOAT.get(w.data_type, (TensorProto.DataType.Name(w.data_type), 32))
        return name, bits, k, n
    bits = _BITS.get(w.data_type, 8)
    scale = inits.get(dq.input[1])
    block = _attr(dq, "block_size", 0)
    if block:
        how = f"groups of {block}"
    elif scale is not None and int(np.prod(scale.dims)) == 1:
        how = "per tensor"
    else:
        how = "per channel"
    return f"int{bits} {how}", bits, k, n


def _activation(x: str, producer: dict, inits: dict) -> tuple[str, int, tuple | None, str]:
    """(format, bits, grid, source tensor)."""
    dq = producer.get(x)
    if dq is None or dq.op_type != "DequantizeLinear":
        return "fp32", 32, None, x
    q = producer.get(dq.input[0])
    src = q.input[0] if q is not None and q.op_type in ("QuantizeLinear",
                                                       "DynamicQuantizeLinear") else x
    zp = inits.get(dq.input[2]) if len(dq.input) > 2 else None
    scale = inits.get(dq.input[1])
    kind = {TensorProto.UINT8: "u8", TensorProto.INT8: "i8"}.get(
        zp.data_type if zp is not None else TensorProto.UINT8, "int")
    bits = _BITS.get(zp.data_type, 8) if zp is not None else 8
    if scale is None or (q is not None and q.op_type == "DynamicQuantizeLinear"):
        return f"{kind} (dynamic)", bits, None, src
    s = numpy_helper.to_array(scale).astype(np.float64).ravel()
    if s.size > 1:
        runs = int((s[1:] != s[:-1]).sum()) + 1
        return f"{kind} PEG ({runs} groups)", bits, None, src
    z = float(numpy_helper.to_array(zp).ravel()[0]) if zp is not None else 0.0
    qmin, qmax = _GRID.get(zp.data_type if zp is not None else TensorProto.UINT8, (0, 255))
    return f"{kind} per tensor", bits, ((qmin - z) * s[0], (qmax - z) * s[0]), src


def onnx_linears(graph: onnx.GraphProto) -> tuple[list[Linear], list[Site]]:
    """Every linear of ``graph`` in node order, and the sites their inputs are (unmeasured)."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    chains = weight_chains(graph)
    linears, sites = [], {}
    for node in graph.node:
        if node.output[0] not in chains:
            continue
        w, chain = chains[node.output[0]]
        weight, wbits, k, n = _weight(node, inits[w], chain, inits)
        act, abits, grid, src = _activation(node.input[0], producer, inits)
        name = _linear_name(w)
        key = (node.name or node.output[0]) if node.op_type == "BCQLinear" else w
        linears.append(Linear(name, key, k, n, weight, wbits, act, abits, site=src))
        if src in sites:
            sites[src].readers.append(name)
        else:
            sites[src] = Site(src, [name], block_of(name), act, grid=grid)
    return linears, list(sites.values())


def linear_tensors(graph: onnx.GraphProto) -> dict[str, tuple[str, list[str], list[str]]]:
    """``{Linear.node: (weight, [its quantization parameters], [bias])}``, initializer names:
    the weight DequantizeLinear's scale and zero point (a BCQLinear's alphas and offsets),
    a Gemm's or a BCQLinear's bias, or the initializer of the one Add reading a MatMul."""
    inits = {i.name for i in graph.initializer}
    chains = weight_chains(graph)
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    for node in graph.node:
        if node.output[0] not in chains:
            continue
        w, chain = chains[node.output[0]]
        if node.op_type == "BCQLinear":
            key, qparams, bias = node.name or node.output[0], node.input[2:4], node.input[4:5]
        else:
            key, bias = w, list(node.input[2:3])
            after = readers.get(node.output[0], [])
            if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add":
                bias = [i for i in after[0].input if i != node.output[0]]
            qparams = [i for c in chain if c.op_type == "DequantizeLinear" for i in c.input[1:]]
        out[key] = (w, [n for n in qparams if n in inits], [n for n in bias if n in inits])
    return out
