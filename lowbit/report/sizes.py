"""Bytes by component, float vs quantized::

    float      every parameter and buffer of the float model, at its dtype
    quantized  every tensor of the quantized graph: a quantized weight at its bits
               (numel * b / 8), a zero point at one byte (as QDQ ONNX stores it), anything
               else (scales, biases, norms, embeddings) at its dtype

Components: ``embeddings`` (tables of the embedding modules), ``linears <weight format> (n)``
(weights, biases, scales and zero points of the n linears of one format), ``other`` (norms,
position ids, what no linear or embedding owns). In an FX graph a tensor belongs to the module
its name lies in (``encoder.layer.0.attention.self.query.weight_i8`` to that query linear); in
an ONNX file to the linear whose weight chain or bias reads it, or to the embeddings when a
Gather reads it as its table. An ONNX file holds no float model: its float side counts each
quantized weight as float32 of the same shape, without its scales and zero points.
"""

from __future__ import annotations

import collections
import math

import torch
from torch import fx

from lowbit.report.data import Linear, SizeRow

__all__ = ["fx_sizes", "onnx_sizes", "rows"]

_QD = "quantized_decomposed.dequantize_per_channel"   # also ..._group


def _owner(name: str, linears: dict[str, str], embeddings: set[str]) -> str:
    module = name.rsplit(".", 1)[0] if "." in name else ""
    if module in linears:
        return linears[module]
    return "embeddings" if module in embeddings else "other"


def rows(linears: list[Linear], floats: dict[str, int], quants: dict[str, int]) -> list[SizeRow]:
    """``SizeRow``s in a fixed order: embeddings, linears by format (most linears first),
    other; components absent on both sides are left out."""
    count = collections.Counter(x.weight for x in linears)
    order = ["embeddings"] + [f"linears {f} ({n})" for f, n in count.most_common()] + ["other"]
    return [SizeRow(c, floats.get(c, 0), quants.get(c, 0)) for c in order
            if floats.get(c) or quants.get(c)]


def fx_sizes(model: torch.nn.Module, qgm: fx.GraphModule, linears: list[Linear]) -> list[SizeRow]:
    """The size breakdown of the float ``model`` and its quantized graph ``qgm``. A tensor
    with several names (a tied head and word table) is counted once, as an embedding when
    an embedding reads it."""
    count = collections.Counter(x.weight for x in linears)
    fmt = {x.name: f"linears {x.weight} ({count[x.weight]})" for x in linears}
    embeddings = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    names: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False),
                    *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), (t, []))[1].append(name)
    floats: dict[str, int] = collections.Counter()
    for t, ns in names.values():
        parts = [_owner(n, fmt, embeddings) for n in ns]
        part = "embeddings" if "embeddings" in parts else parts[0]
        floats[part] += t.numel() * t.element_size()

    bits: dict[str, float] = {}          # get_attr target -> bits per element
    for n in qgm.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith(_QD):
            w, z = n.args[0], n.args[2]
            lo, hi = (n.args[4], n.args[5]) if "group" not in str(n.target) else n.args[3:5]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                bits[w.target] = math.ceil(math.log2(hi - lo + 1))
            if isinstance(z, fx.Node) and z.op == "get_attr":
                bits[z.target] = 8
    tensors: dict[int, tuple[int, str]] = {}   # id -> (bytes, component)
    for n in qgm.graph.nodes:
        if n.op != "get_attr":
            continue
        t = qgm
        for part in n.target.split("."):
            t = getattr(t, part, None)
        if not isinstance(t, torch.Tensor):
            continue
        size = math.ceil(t.numel() * bits[n.target] / 8) if n.target in bits else \
            t.numel() * t.element_size()
        table = any(u.target is torch.ops.aten.embedding.default and u.args[0] is n
                    for u in n.users)
        part = "embeddings" if table else _owner(n.target, fmt, embeddings)
        if id(t) not in tensors or part == "embeddings":
            tensors[id(t)] = (size, part)
    quants: dict[str, int] = collections.Counter()
    for size, part in tensors.values():
        quants[part] += size
    return rows(linears, floats, quants)


def _bytes(t) -> int:
    from onnx import TensorProto, helper

    n = math.prod(t.dims)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return math.ceil(n / 2)
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def onnx_sizes(graph, linears: list[Linear]) -> list[SizeRow]:
    """The size breakdown of a QDQ ONNX graph (``onnx.GraphProto``) and its float twin."""
    from lowbit.report.onnx_layers import linear_tensors

    count = collections.Counter(x.weight for x in linears)
    owned = linear_tensors(graph)
    owner: dict[str, str] = {}
    as_float: dict[str, int] = {}        # initializer -> its bytes in the float model
    for x in linears:
        if x.node not in owned:
            continue
        w, qparams, bias = owned[x.node]
        for name in (w, *qparams, *bias):
            owner.setdefault(name, f"linears {x.weight} ({count[x.weight]})")
        if x.quantized:
            as_float[w] = x.in_features * x.out_features * 4
            as_float.update({q: 0 for q in qparams})
    for node in graph.node:
        if node.op_type == "Gather" and node.input:
            owner.setdefault(node.input[0], "embeddings")
    floats: dict[str, int] = collections.Counter()
    quants: dict[str, int] = collections.Counter()
    for t in graph.initializer:
        part = owner.get(t.name, "other")
        quants[part] += _bytes(t)
        floats[part] += as_float.get(t.name, _bytes(t))
    return rows(linears, floats, quants)
