"""The PEG planner: per-axis (PEG) activations -> the group-wise int8 GEMM, for both frontends.

A PEG input (lowbit.quant.peg) reaches a linear as a per-channel quantizer along the last
(hidden) axis whose scale and zero-point vectors are constant on G equal contiguous channel
groups (``peg_recipe(permute=False)``, or a permutation folded into the weights). In ONNX::

    matmul(dequantize(x_q, s_x[K], z_x[K], axis=-1), dequantize(W_i8[K, N], s_w[N], 0, axis=1))
        [+ b[N]]  ->  linear_u8s8_peg(x_u8 [M, K], pack_vnni(W^T), corr_i32 [G, N],
                                      scale_f32 [G, N], b_f32) [..., N]

and the same with ``quantize_per_channel`` / ``dequantize_per_channel`` and ``aten.linear``
in FX (legalize.py)::

    y[m, n] = sum_g sum_{k in g} s_g (x_q[m, k] - z_g) s_w[n] W[k, n] + b[n]
            = sum_g s_g s_w[n] (acc_g[m, n] - z_g colsum_g(W)[n]) + b[n]
    corr[g, n] = z_g colsum_g(W)[n],   scale[g, n] = s_g s_w[n],   acc_g = x_u8[:, g] @ W[g, :]

G is the fewest equal contiguous groups on which both vectors are constant with K / G a
multiple of 4 (``int8.contiguous_groups``), and ``corr`` and ``scale`` come from
``int8.peg_corr_scale``. An s8 ``x_q`` arrives with its zero points already moved to the u8
grid (``z + 128``; the frontend adds 128 to ``x_q``). This module only plans (numpy); the
frontends match their patterns and emit the call (legalize.py, frontends/onnx_qdq.py).

Skipped on purpose (the matmul stays float; the reason goes to the lowering log): per-axis
input qparams not along the last axis or not of size K; vectors not constant on equal
contiguous groups (PEG with ``permute=True`` and no permutation folded: the groups interleave);
groups K / G wide with K / G not a multiple of 4 (VNNI); N not a multiple of 16 (the kernel's
schedule tiles N by 16).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lowbit.backends.tvm.lowering.int8 import contiguous_groups, peg_corr_scale
from lowbit.backends.tvm.lowering.pack import VNNI_K, VNNI_N

__all__ = ["PegArrays", "plan_peg"]


@dataclasses.dataclass(frozen=True)
class PegArrays:
    """What ``linear_u8s8_peg`` takes besides the input, the packed weight and the bias."""

    groups: int
    corr_i32: np.ndarray     # [G, N]
    scale_f32: np.ndarray    # [G, N]


def plan_peg(w_kn: np.ndarray, s_w: np.ndarray, s_x: np.ndarray, z_x: np.ndarray, *,
             axis: int, ndim: int) -> PegArrays | str:
    """The PEG kernel's arrays for ``W [K, N]`` (int8), ``s_w [N]`` and the per-axis input
    qparams ``s_x``, ``z_x`` (u8 grid) along ``axis`` of an ``ndim``-D input; or, when the
    pattern is refused, the reason (``"fp32: ..."``)."""
    k, n = w_kn.shape
    if axis % ndim != ndim - 1:
        return f"fp32: per-axis input qparams on axis {axis}, not the last (hidden) axis"
    if s_x.size not in (1, k) or z_x.size not in (1, k):
        return f"fp32: per-axis input qparams of sizes {s_x.size}, {z_x.size}, not K={k}"
    s_x = np.broadcast_to(s_x.reshape(-1), (k,))
    z_x = np.broadcast_to(z_x.reshape(-1), (k,))
    groups = contiguous_groups(s_x, z_x, k)
    if groups is None:
        return _why_not_grouped(s_x, z_x, k)
    if n % VNNI_N:
        return f"fp32: N={n} not a multiple of {VNNI_N} (PEG kernel)"
    corr, scale = peg_corr_scale(np.ascontiguousarray(w_kn.T), s_w, s_x, z_x, groups)
    return PegArrays(groups, corr, scale)


def _why_not_grouped(s_x: np.ndarray, z_x: np.ndarray, k: int) -> str:
    """Why no tiling into equal contiguous groups of a multiple of 4 channels fits."""
    pairs = np.stack([s_x.astype(np.float64), z_x.astype(np.float64)], 1)
    distinct = len(np.unique(pairs, axis=0))
    runs = 1 + int(np.any(pairs[1:] != pairs[:-1], axis=1).sum())
    if runs > distinct:
        return (f"fp32: per-axis input qparams not constant on contiguous channel groups "
                f"({distinct} distinct values in {runs} runs: the groups interleave, as with "
                f"PEG permute=True and no permutation folded)")
    width = k // contiguous_groups(s_x, z_x, k, multiple=1)
    return (f"fp32: per-axis input qparams tile K={k} into equal groups of {width} channel(s) "
            f"at best, not a multiple of {VNNI_K} (VNNI)")
