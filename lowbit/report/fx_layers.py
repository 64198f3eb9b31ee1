"""The linears of a quantized FX graph (``lowbit.quantize``'s result) and the tensors they read,
with the formats read off the q/dq ops around each one::

    aten.linear(x, W, b)                     W [N, K]
    aten.addmm(b, x, W)                      W [K, N] (Hugging Face Conv1D: GPT-2)
    lowbit.bcq_linear(x, planes, alpha, ..)  planes [q, N, K/8], alpha [N, G, q]

    weight  dequantize_per_channel(W_q, s, z, axis, qmin, qmax)        int<b> per channel
            dequantize_per_channel_group(W_q, s, z, qmin, qmax, .., g)  int<b> groups of g
            a float parameter                                           fp32 (its dtype)
    input   dequantize_per_tensor(quantize_per_tensor(x, s, z, ..))    u8 / i8 per tensor,
                                             grid [(qmin - z) s, (qmax - z) s]
            dequantize_per_token(..)                                    i8 per token (dynamic)
            dequantize_per_channel(..)                                  u8 PEG (G groups)

with ``b = ceil(log2(qmax - qmin + 1))``. A linear's input site is the float value its q/dq
chain starts from, so q, k and v (one LayerNorm output) share a site.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from lowbit.passes.view.fx_graph import tensor_of
from lowbit.quant.bcq_linear import BCQ_LINEAR
from lowbit.report.data import Linear, Site, block_of

__all__ = ["fx_linears", "module_path"]

_QD = "quantized_decomposed"


def module_path(node: fx.Node) -> str:
    """The module a node was traced from (``nn_module_stack``), else the node's name."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else node.name


def _op(node, name: str) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function"
            and str(node.target).startswith(f"{_QD}.{name}."))


_tensor = tensor_of          # the parameter or buffer a get_attr node reads


def _bits(qmin: int, qmax: int) -> int:
    return math.ceil(math.log2(qmax - qmin + 1))


def _weight(gm: fx.GraphModule, node, w) -> tuple[str, float]:
    if node.target is BCQ_LINEAR:
        planes, alpha = _tensor(gm, w), _tensor(gm, node.args[2])
        q, groups, k = planes.shape[0], alpha.shape[1], planes.shape[2] * 8
        per = "row" if groups == 1 else f"{k // groups} inputs"
        return f"BCQ {q} planes, alpha per {per}", float(q)
    if _op(w, "dequantize_per_channel"):
        return f"int{_bits(w.args[4], w.args[5])} per channel", _bits(w.args[4], w.args[5])
    if _op(w, "dequantize_per_channel_group"):
        bits = _bits(w.args[3], w.args[4])
        return f"int{bits} groups of {w.args[6]}", bits
    t = _tensor(gm, w)
    dtype = t.dtype if t is not None else torch.float32
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return names.get(dtype, str(dtype).removeprefix("torch.")), dtype.itemsize * 8


def _activation(gm: fx.GraphModule, x) -> tuple[str, int, tuple[float, float] | None]:
    kind = {torch.uint8: "u8", torch.int8: "i8"}
    if _op(x, "dequantize_per_tensor"):
        _, s, z, qmin, qmax, dtype = x.args[:6]
        grid = ((qmin - z) * s, (qmax - z) * s) if isinstance(s, float) else None
        return f"{kind.get(dtype, dtype)} per tensor", _bits(qmin, qmax), grid
    if _op(x, "dequantize_per_token"):
        return "i8 per token (dynamic)", _bits(x.args[3], x.args[4]), None
    if _op(x, "dequantize_per_channel"):
        s = _tensor(gm, x.args[1])
        runs = 1 if s is None else int((s[1:] != s[:-1]).sum()) + 1
        return f"{kind.get(x.args[6], x.args[6])} PEG ({runs} groups)", _bits(*x.args[4:6]), None
    return "fp32", 32, None


def _source(x) -> fx.Node:
    """The float value a q/dq chain starts from."""
    while isinstance(x, fx.Node) and x.op == "call_function" and str(x.target).startswith(_QD):
        x = x.args[0]
    return x


def fx_linears(gm: fx.GraphModule) -> tuple[list[Linear], list[Site]]:
    """Every linear of ``gm`` in graph order, and the sites their inputs are (unmeasured)."""
    linears, sites = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.linear.default:
            x, w = node.args[0], node.args[1]
        elif node.target is torch.ops.aten.addmm.default:
            x, w = node.args[1], node.args[2]
        elif node.target is BCQ_LINEAR:
            x, w = node.args[0], node.args[1]
        else:
            continue
        if isinstance(_source(w), fx.Node) and _source(w).op != "get_attr":
            continue                       # a matmul of two activations (not a linear layer)
        name = module_path(node)
        weight, wbits = _weight(gm, node, w)
        act, abits, grid = _activation(gm, x)
        src = _source(x)
        key = src.name if isinstance(src, fx.Node) else name
        k = int(src.meta["val"].shape[-1]) if "val" in getattr(src, "meta", {}) else 0
        n = int(node.meta["val"].shape[-1]) if "val" in node.meta else 0
        linears.append(Linear(name, node.name, k, n, weight, wbits, act, abits, site=key))
        if key in sites:
            sites[key].readers.append(name)
        else:
            sites[key] = Site(key, [name], block_of(name), act, grid=grid)
    return linears, list(sites.values())
