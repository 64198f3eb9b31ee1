"""PEG numerics (per-embedding-group activation quantization, Bondarenko et al., EMNLP 2021),
shared by the FX and ONNX passes.

Ranges. From calibrated per-channel ranges ``[lo_c, hi_c]`` of an activation with C channels
(last axis), an ``order`` of the channels (a permutation of 0..C-1) and K groups (K | C)::

    group(order[i]) = i // (C / K)                   K contiguous runs of ``order``
    lo_g = min_{c in g} lo_c,  hi_g = max_{c in g} hi_c
    s_c, z_c = qparams_from_range(lo_g, hi_g)  for every c in g(c)

so a PEG quantizer is an ordinary per-channel quantizer along the last axis whose scale and
zero-point vectors are constant within each group (standard per-axis Q/DQ in FX and ONNX).
``order`` is the identity without permutation, and ``range_order`` (channels sorted by range
``hi - lo``, ascending, stable: the outlier channels share the last group) with it.

Permutation. ``x' = x[..., p]`` (new channel i is old channel ``p[i]``) is free when folded::

    consumer linear   W' = W[:, p]       ([out, in]; [in, out]: W[p, :])
    producer linear   W' = W[p, :], b' = b[p]
    LayerNorm         gamma' = gamma[p], beta' = beta[p]   (mean and variance do not depend
                                                            on the channel order)
    embedding table   E' = E[:, p]
    undo              x = x'[..., argsort(p)]              (an explicit gather)

Indexing moves values and changes none, so folding is exact in fp32; only the order in which a
matmul or a norm sums its terms changes. ``shared_order`` picks one order for several sites of
one tensor family (a post-LN residual stream has a single channel order end to end).
Every function takes torch tensors or numpy arrays (returned in kind).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.quant.numerics import qparams_from_range

__all__ = ["check_groups", "range_order", "shared_order", "group_index", "peg_qparams", "spec_qparams",
           "inverse", "permute_in", "permute_out", "permute_vector", "permute_table"]

T = TypeVar("T", torch.Tensor, np.ndarray)


def check_groups(channels: int, groups: int, site: str) -> None:
    """K must divide C (ConfigError naming the site and both numbers)."""
    if channels % groups:
        raise ConfigError(f"{site}: PerEmbeddingGroup(groups={groups}) does not divide the "
                          f"hidden size {channels}; pick a K that divides {channels}")


def range_order(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Channels sorted by calibrated range ``hi - lo`` (ascending, stable), int64 [C]."""
    return torch.sort((hi.float() - lo.float()), stable=True).indices


def shared_order(ranges: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One channel order for several sites: sorted by ``max_sites (hi - lo) / median(hi - lo)``
    (each site's ranges relative to its own typical channel, so no site dominates by scale)."""
    key = None
    for lo, hi in ranges:
        r = (hi.float() - lo.float()).clamp_min(0)
        r = r / r.median().clamp_min(torch.finfo(torch.float32).tiny)
        key = r if key is None else torch.maximum(key, r)
    return torch.sort(key, stable=True).indices


def group_index(order: torch.Tensor, groups: int) -> torch.Tensor:
    """Group id (0..K-1) of every channel, int64 [C]."""
    c = order.numel()
    gid = torch.empty(c, dtype=torch.int64)
    gid[order] = torch.arange(c, dtype=torch.int64) // (c // groups)
    return gid


def peg_qparams(lo: torch.Tensor, hi: torch.Tensor, groups: int, order: torch.Tensor,
                qmin: int, qmax: int, symmetric: bool, site: str = "activation"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale (f32 [C]) and zero point (i64 [C]), constant within each group."""
    lo, hi = lo.float().reshape(-1), hi.float().reshape(-1)
    check_groups(lo.numel(), groups, site)
    gid = group_index(order, groups)
    inf = torch.full((groups,), float("inf"))
    glo = inf.scatter_reduce(0, gid, lo, "amin")
    ghi = (-inf).scatter_reduce(0, gid, hi, "amax")
    scale, zp = qparams_from_range(glo, ghi, qmin, qmax, symmetric)
    return scale[gid], zp[gid]


def spec_qparams(lo: torch.Tensor, hi: torch.Tensor, spec, order: torch.Tensor | None = None,
                 site: str = "activation") -> tuple[torch.Tensor, torch.Tensor]:
    """``peg_qparams`` for a PEG activation ``QuantSpec``. Without an explicit ``order`` the
    channels are sorted by their own range (``permute=True``) or kept in place."""
    g = spec.granularity
    if order is None:
        order = range_order(lo, hi) if g.permute else torch.arange(lo.numel())
    return peg_qparams(lo, hi, g.groups, order, spec.qmin, spec.qmax, spec.symmetric, site)


def inverse(p: torch.Tensor) -> torch.Tensor:
    return torch.argsort(p)


def _take(x: T, p: torch.Tensor, axis: int) -> T:
    if isinstance(x, np.ndarray):
        return np.take(x, p.numpy(), axis=axis)
    return torch.index_select(x, axis, p.to(x.device))


def permute_in(w: T, p: torch.Tensor, layout: str) -> T:
    """A consumer linear's input columns: ``W[:, p]`` ([out, in]) or ``W[p, :]`` ([in, out])."""
    return _take(w, p, 1 if layout == "out_in" else 0)


def permute_out(w: T, p: torch.Tensor, layout: str) -> T:
    """A producer linear's output rows: ``W[p, :]`` ([out, in]) or ``W[:, p]`` ([in, out])."""
    return _take(w, p, 0 if layout == "out_in" else 1)


def permute_vector(v: T, p: torch.Tensor) -> T:
    """A bias, LayerNorm gamma / beta, or any parameter indexed by channel on its last axis."""
    return _take(v, p, v.ndim - 1)


def permute_table(e: T, p: torch.Tensor) -> T:
    """An embedding table's columns."""
    return _take(e, p, 1)
