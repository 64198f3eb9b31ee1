"""The numerics of every int8 linear kernel, once for both frontends (FX: legalize.py, ONNX:
frontends/onnx_qdq.py): the zero-point corrections and scales the kernels take.

A u8 input with scale ``s_x`` and zero point ``z_x`` (per tensor, or constant on G contiguous
channel groups: PEG), and an s8 weight ``w_i8 [N, K]`` symmetric per output channel (``s_w``)::

    y[m, n] = sum_k s_x[k] (x_u8[m, k] - z_x[k]) s_w[n] w[n, k] + b[n]
            = sum_g s_g s_w[n] (acc_g[m, n] - z_g sum_{k in g} w[n, k]) + b[n]

    corr_i32[g, n]  = z_g * sum_{k in g} w[n, k]        (int64 sums, then int32)
    scale_f32[g, n] = f32(f64(s_g) * f64(s_w[n]))       (one rounding)

W8A8 (``linear_u8s8``) is the case G = 1, with corr and scale of shape [N]. An s8 input grid
becomes u8 exactly by adding ``S8_TO_U8`` to the values, the zero point and both grid ends.
Arrays may be torch tensors or numpy arrays; results are numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.backends.tvm.lowering.pack import VNNI_K

__all__ = ["S8_TO_U8", "contiguous_groups", "peg_corr_scale", "w8a8_corr_scale"]

S8_TO_U8 = 128   # q_u8 = q_s8 + 128, z_u8 = z_s8 + 128


def _np(x: Any) -> np.ndarray:
    """A numpy view of a torch tensor (detached, on the CPU) or an array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def contiguous_groups(scale: Any, zero: Any, k: int, multiple: int = VNNI_K) -> int | None:
    """The fewest G equal contiguous channel groups on which both [K] vectors (torch or numpy)
    are constant, with K / G a multiple of ``multiple`` (None if there is none)."""
    s_all, z_all = _np(scale).reshape(-1), _np(zero).reshape(-1)
    if s_all.size != k or z_all.size != k:
        return None
    for groups in range(1, k // multiple + 1):
        if k % groups or (k // groups) % multiple:
            continue
        s, z = s_all.reshape(groups, -1), z_all.reshape(groups, -1)
        if bool((s == s[:, :1]).all()) and bool((z == z[:, :1]).all()):
            return groups
    return None


def peg_corr_scale(w_i8: Any, s_w: Any, s_x: Any, z_x: Any, groups: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``corr_i32 [G, N]`` and ``scale_f32 [G, N]`` of the kernel (module docstring) for
    ``w_i8 [N, K]``, ``s_w [N]`` and the input's ``s_x [K]``, ``z_x [K]`` (u8 grid: an s8
    input's zero points already moved by 128), constant on ``groups`` contiguous groups::

        corr[g, n] = z_g * sum_{c in g} w[n, c]          (int64, then int32)
        scale[g, n] = f32(f64(s_g) * f64(s_w[n]))        (one rounding)
    """
    w = _np(w_i8).astype(np.int64)
    n, k = w.shape
    kg = k // groups
    z_g = _np(z_x).reshape(groups, kg)[:, 0].astype(np.int64)
    corr = (z_g[:, None] * w.reshape(n, groups, kg).sum(2).T).astype(np.int32)
    s_g = _np(s_x).reshape(groups, kg)[:, 0].astype(np.float64)
    scale = (s_g[:, None] * _np(s_w).reshape(1, n).astype(np.float64)).astype(np.float32)
    return corr, scale


def w8a8_corr_scale(w_i8: Any, s_w: Any, s_x: float, z_x: int) -> tuple[np.ndarray, np.ndarray]:
    """``corr_i32 [N]`` and ``scale_f32 [N]`` of ``linear_u8s8`` for ``w_i8 [N, K]``, ``s_w [N]``
    and a per-tensor input ``s_x``, ``z_x`` (u8 grid): the one-group case of
    ``peg_corr_scale``."""
    w = _np(w_i8)
    n, k = w.shape
    corr, scale = peg_corr_scale(w, s_w, np.full(k, float(s_x)), np.full(k, int(z_x)), 1)
    return corr.reshape(n), scale.reshape(n)
