"""Channel-scale numerics shared by the FX and ONNX SmoothQuant / FoldChannelScales passes.

A *scale pair* at a linear input ``y`` (last axis C) computes ``(y / a) * a``. SmoothQuant
(Xiao et al., 2023) picks, per input channel j, from calibrated ``max|y_j|`` and the consumer
weights' ``max_k max_o |W_k[o, j]|``::

    a_j = max|y_j|^alpha / max|W_:,j|^(1 - alpha)       both clamped below at 1e-5, a_j to
                                                         [1e-5, 1e5]

Folding the pair is exact in real arithmetic; here it is computed in float64 and stored back
in the parameter's own dtype::

    consumer linear   W' = W diag(a)            (input channel j times a_j)
    producer linear   W_p' = diag(1/a) W_p      (output channel j over a_j),  b_p' = b_p / a
    LayerNorm         gamma' = gamma / a,  beta' = beta / a
    RMSNorm           w' = w / a;   Gemma's (c + w) form (c = 1):  w' = (c + w) / a - c

Weights come in two layouts (the ``LinearRef.weight_layout`` vocabulary): "out_in" ([N, K]:
nn.Linear, ONNX Gemm transB=1) and "in_out" ([K, N]: HF Conv1D, a plain ONNX MatMul). Every
function takes and returns a torch tensor or a numpy array (same kind and dtype out as in),
so the torch.fx passes and the onnx_ir passes call the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch

from lowbit.errors import ConfigError

__all__ = [
    "CLAMP",
    "LAYOUTS",
    "absmax_from_range",
    "check_options",
    "fold_bias",
    "fold_consumer_weight",
    "fold_norm_param",
    "fold_producer_weight",
    "smoothquant_scale",
    "weight_in_absmax",
]

CLAMP = (1e-5, 1e5)
LAYOUTS = ("out_in", "in_out")
T = TypeVar("T", torch.Tensor, np.ndarray)


def _f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, dtype=np.float64))   # a copy: may be read-only
    return x.detach().to(torch.float64)


def _like(t64: torch.Tensor, like: T) -> T:
    if isinstance(like, np.ndarray):
        return t64.numpy().astype(like.dtype)
    return t64.to(like.dtype)


def _in_axis(layout: str) -> int:
    """The axis of a 2-D weight that indexes input channels."""
    if layout not in LAYOUTS:
        raise ConfigError(f"weight layout must be one of {LAYOUTS}, got {layout!r}")
    return 1 if layout == "out_in" else 0


def absmax_from_range(lo: T, hi: T) -> T:
    """max |x| per channel from an observer's (min, max)."""
    return np.maximum(-lo, hi) if isinstance(lo, np.ndarray) else torch.maximum(-lo, hi)


def weight_in_absmax(w: torch.Tensor | np.ndarray, layout: str) -> torch.Tensor:
    """``max_o |W[o, j]|`` per input channel j, float64 [K]."""
    return _f64(w).abs().amax(dim=1 - _in_axis(layout))


def smoothquant_scale(x_absmax: torch.Tensor | np.ndarray,
                      weights: Iterable[tuple[torch.Tensor | np.ndarray, str]],
                      alpha: float) -> torch.Tensor:
    """The closed-form SmoothQuant scale (module docstring) for one tensor read by the linears
    whose (weight, layout) are ``weights``; float32 [C]."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"smoothquant_scale: alpha must be in [0, 1], got {alpha}")
    x = _f64(x_absmax).clamp_min(CLAMP[0])
    w = torch.zeros_like(x)
    for weight, layout in weights:
        w = torch.maximum(w, weight_in_absmax(weight, layout))
    a = x.pow(alpha) / w.clamp_min(CLAMP[0]).pow(1 - alpha)
    return a.clamp(*CLAMP).float()


def _along(a: torch.Tensor, axis: int) -> torch.Tensor:
    return a.reshape((1, -1) if axis == 1 else (-1, 1))


def fold_consumer_weight(w: T, a: torch.Tensor | np.ndarray, layout: str) -> T:
    """``W diag(a)``: input channel j of a consumer's weight times ``a_j``."""
    return _like(_f64(w) * _along(_f64(a), _in_axis(layout)), w)


def fold_producer_weight(w: T, a: torch.Tensor | np.ndarray, layout: str) -> T:
    """``diag(1/a) W_p``: output channel j of a producer's weight over ``a_j``."""
    return _like(_f64(w) / _along(_f64(a), 1 - _in_axis(layout)), w)


def fold_norm_param(p: T, a: torch.Tensor | np.ndarray, offset: float = 0.0) -> T:
    """``(offset + p) / a - offset``: LayerNorm gamma / beta and RMSNorm w (offset 0), Gemma's
    ``(1 + w)`` RMSNorm weight (offset 1)."""
    return _like((_f64(p) + offset) / _f64(a) - offset, p)


def fold_bias(b: T, a: torch.Tensor | np.ndarray) -> T:
    """``b_p / a``: a producer linear's bias."""
    return fold_norm_param(b, a, 0.0)


def check_options(alpha: float, absmax, calibrate_with: str) -> None:
    """SmoothQuantScales' options, checked alike in both IRs (ConfigError naming the problem;
    ``calibrate_with`` names the function that makes ``absmax``)."""
    from collections.abc import Mapping

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuantScales: alpha must be in [0, 1], got {alpha}")
    if not isinstance(absmax, Mapping):
        raise ConfigError(f"SmoothQuantScales: absmax must map linear names to tensors "
                          f"({calibrate_with}), got {type(absmax).__name__}")
