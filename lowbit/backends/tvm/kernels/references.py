"""Numpy references of the kernels of defs.py (exact integer accumulation), registered by
kind for check.py; the PEG kernel's is in peg.py."""

from __future__ import annotations

from tvm import tirx

from lowbit.backends.tvm.kernels.registry import register_reference

__all__ = ["reference_activation", "reference_linear_u8s8", "reference_linear_u8s8_q",
           "reference_linear_w4a16"]


def reference_linear_u8s8(x_u8, w_i8, corr_i32, scale_f32, bias_f32):
    """numpy ``linear_u8s8``: int64 accumulation, then the fp32 epilogue."""
    import numpy as np

    n = corr_i32.shape[0]
    a, b, c, d = w_i8.shape
    w = w_i8.transpose(0, 2, 1, 3).reshape(a * c, b * d)[:n].astype(np.int64)
    acc = x_u8.astype(np.int64) @ w.T
    return (acc - corr_i32).astype(np.float32) * scale_f32 + bias_f32


def reference_activation(y, act: str):
    """numpy ``act`` in float64 (exact erf / tanh: the kernel's fast polynomials differ by
    about 1e-7 relative, so a requantized output may sit one step off at a rounding tie)."""
    import math

    import numpy as np

    if act == "none":
        return y
    if act == "relu":
        return np.maximum(y, 0.0)
    if act == "gelu":
        return y * (0.5 + 0.5 * np.vectorize(math.erf)(y * 0.7071067811865476))
    if act == "gelu_tanh":
        return y * (0.5 + 0.5 * np.tanh(0.7978845608028654 * (y + 0.044715 * y ** 3)))
    raise ValueError(f"unknown activation {act!r}")


def reference_linear_u8s8_q(x_u8, w_i8, corr_i32, scale_f32, bias_f32, oq_f32, *,
                            act: str = "none", qmin: int = 0, qmax: int = 255):
    """numpy ``linear_u8s8_q``: the W8A8 reference, ``act``, then round half to even."""
    import numpy as np

    y = reference_activation(
        reference_linear_u8s8(x_u8, w_i8, corr_i32, scale_f32, bias_f32).astype(np.float64), act)
    q = np.round((y * oq_f32[0]).astype(np.float32)) + oq_f32[1]
    return np.clip(q, qmin, qmax).astype(np.uint8)


def reference_linear_w4a16(x_f32, w_u4x2, scale_f32, bias_f32):
    """numpy ``linear_w4a16`` (float64 accumulation)."""
    import numpy as np

    k2, n = w_u4x2.shape
    lo = (w_u4x2 & 15).astype(np.int64) - 8
    hi = (w_u4x2 >> 4).astype(np.int64) - 8
    w = np.stack([lo, hi], axis=1).reshape(2 * k2, n)                  # [K, N]
    group = 2 * k2 // scale_f32.shape[0]
    w = w * np.repeat(scale_f32.astype(np.float64), group, axis=0)
    return (x_f32.astype(np.float64) @ w + bias_f32).astype(np.float32)


def _requant_options(func: tirx.PrimFunc) -> dict:
    """``linear_u8s8_q``'s activation and output grid, from the kernel's attributes."""
    return {"act": str(func.attrs["lowbit.act"]), "qmin": int(func.attrs["lowbit.qmin"]),
            "qmax": int(func.attrs["lowbit.qmax"])}


register_reference("linear_u8s8", reference_linear_u8s8)
register_reference("linear_u8s8_q", reference_linear_u8s8_q, _requant_options)
register_reference("linear_w4a16", reference_linear_w4a16)
