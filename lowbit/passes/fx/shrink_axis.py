"""Shrink the head (or neuron) axis between the linears that make it and the one that reads it.

Structural pruning (``prune_subgroups.py``) drops heads from q, k, v and the matching input
columns of o. Every tensor on a path from q / k / v to o carries exactly one axis made of
heads (the projections' last axis ``[.., H*d]``; after ``view`` ``[B, S, H, d]`` axis 2; after
``transpose`` axis 1; GQA's ``expand`` ``[B, KV, rep, S, d]`` then ``reshape [B, H, S, d]``:
axis 1). Keeping ``k`` of ``n`` heads multiplies that axis by ``r = k / n`` in every one of
those tensors (GQA prunes a kv head with its q heads, so q and kv shrink by the same r). The
axis is followed op by op; the shape arguments that fix it (``view`` / ``reshape`` /
``expand`` sizes) are rewritten ``s -> s * r`` (``-1`` entries stay). A reshape maps the axis
to the output axis holding the same outer index: with ``P = prod(in[:a])`` the axis ``b``
with ``prod(out[:b]) <= P < prod(out[:b+1])``, so splitting ``H*d`` into ``H, d``, merging
``KV, rep`` into ``H`` or ``B, H`` into ``B*H`` all follow.

Refused with a ConfigError naming the node: an op not listed here, a reduction, softmax,
slice or cat along the head axis, a tensor from outside the region that carries heads (a mask
``[B, H, S, S]``), a region tensor read by anything but the region and the sink.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import fx

from lowbit.errors import ConfigError
from lowbit.passes.view.fx_graph import shape_of

__all__ = ["region", "shrink_axis"]

aten = torch.ops.aten
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_SAME = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default,
         aten.type_as.default, aten.alias.default, aten.dropout.default,
         aten.contiguous.default, aten.detach.default, aten.clone.default}
_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten.log_softmax.int,
            aten._log_softmax.default}
_REDUCE = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default}
_MATMUL = {aten.matmul.default, aten.bmm.default}


def region(sources: list[fx.Node], sink: fx.Node) -> list[fx.Node]:
    """The nodes on a path from ``sources`` to ``sink`` (sources included, sink not), graph
    order; ConfigError when one of them is read off the path."""
    seen, stack = set(sources), list(sources)
    while stack:
        for u in stack.pop().users:
            if u.op == "output":
                raise ConfigError(f"pruning: the graph returns a tensor of the pruned axis "
                                  f"(before {sink.name}); cannot prune there")
            if u is not sink and u not in seen:
                seen.add(u)
                stack.append(u)
    for n in seen:
        if not n.users and shape_of(n) is not None:
            raise ConfigError(f"pruning: {n.format_node()} reads the pruned axis and leaves "
                              f"the graph before {sink.name}; cannot prune there")
    return sorted(n for n in seen if shape_of(n) is not None)


def _norm(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _reshaped(src: tuple, a: int, dst: tuple) -> int:
    p, acc = math.prod(src[:a]), 1
    for b, s in enumerate(dst):
        if acc <= p < acc * s and p % acc == 0:
            return b
        acc *= s
    raise ValueError


def _axis(n: fx.Node, ax: dict[fx.Node, int]) -> int:
    """The pruned axis of ``n``'s output, from its region inputs (module docstring)."""
    t, args = n.target, n.args
    src = next(a for a in n.all_input_nodes if a in ax)
    a, rin, rout = ax[src], len(shape_of(src)), len(shape_of(n))
    if t in _SAME:
        return a
    if t in _VIEWS:
        return _reshaped(shape_of(src), a, shape_of(n))
    if t == aten.expand.default:
        return a + rout - rin
    if t == aten.transpose.int:
        d0, d1 = (_norm(d, rin) for d in args[1:3])
        return d1 if a == d0 else d0 if a == d1 else a
    if t == aten.permute.default:
        return [_norm(d, rin) for d in args[1]].index(a)
    if t == aten.unsqueeze.default:
        return a + (_norm(args[1], rout) <= a)
    if t in (aten.slice.Tensor, aten.select.int, *_SOFTMAX):
        d = _norm(args[1] if len(args) > 1 else 0, rin)
        if d == a:
            raise ValueError
        return a - (t == aten.select.int and d < a)
    if t == aten.cat.default:
        d = _norm(args[1] if len(args) > 1 else 0, rout)
        if d == a or any(ax.get(x, a) != a for x in args[0]):
            raise ValueError
        return a
    if t == aten.scaled_dot_product_attention.default:
        if any(ax.get(x, ax[args[0]]) != ax[args[0]] for x in args[:3]):
            raise ValueError
        return ax[args[0]]
    if t in _MATMUL:
        if a >= rin - 2:
            raise ValueError
        return rout - (rin - a)
    if t in _REDUCE:
        dims = [_norm(d, rin) for d in args[1]]
        keep = args[2] if len(args) > 2 else n.kwargs.get("keepdim", False)
        if a in dims:
            raise ValueError
        return a if keep else a - sum(d < a for d in dims)
    if isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags:
        out = rout - (rin - a)
        for x in n.all_input_nodes:
            sx = shape_of(x)
            if sx is None:
                continue
            pos = out - (rout - len(sx))
            if x in ax and pos != ax[x] or x not in ax and 0 <= pos and sx[pos] != 1:
                raise ValueError
        return out
    raise ValueError


def shrink_axis(nodes: list[fx.Node], sources: list[fx.Node], ratio: Fraction,
                what: str) -> int:
    """Follow the pruned axis through ``nodes`` (``region``), rewrite the shape arguments that
    fix it by ``ratio``; returns how many were rewritten. Meta shapes are left to the caller."""
    ax = {s: len(shape_of(s)) - 1 for s in sources}
    rewritten = 0
    for n in nodes:
        if n in ax:
            continue
        try:
            a = ax[n] = _axis(n, ax)
        except (ValueError, StopIteration, IndexError, TypeError):
            raise ConfigError(f"pruning {what}: cannot follow the pruned axis through "
                              f"{n.format_node()} (lowbit/passes/fx/shrink_axis.py lists the "
                              f"ops it follows)") from None
        if n.target in _VIEWS or n.target == aten.expand.default:
            sizes = list(n.args[1])
            if not isinstance(sizes[a], int):
                raise ConfigError(f"pruning {what}: {n.name} has a symbolic size on the pruned "
                                  f"axis; capture with static shapes")
            if sizes[a] != -1:
                new = sizes[a] * ratio
                if new.denominator != 1:
                    raise ConfigError(f"pruning {what}: size {sizes[a]} of {n.name} does not "
                                      f"shrink by {ratio}")
                sizes[a] = int(new)
                n.args = (n.args[0], sizes, *n.args[2:])
                rewritten += 1
    return rewritten
