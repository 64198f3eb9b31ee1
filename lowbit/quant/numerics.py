"""Quantization math, written once.

For a range ``[lo, hi]`` (always widened to contain 0) and integer grid ``[qmin, qmax]``:

    symmetric:  s = max(|lo|, |hi|) / ((qmax - qmin) / 2),  z = 0        (signed grid)
    affine:     s = (hi - lo) / (qmax - qmin),               z = qmin - round(lo / s)

    quantize:    q = clamp(round(x / s) + z, qmin, qmax)
    dequantize:  x' = (q - z) * s
    fake-quant:  x' = (clamp(round_ste(x / s) + z, qmin, qmax) - z) * s

``round_ste`` rounds in the forward pass and passes gradients straight through, so the same
expression trains (QAT) and, with ``s`` a Parameter, learns its scale (LSQ-style gradient;
``scale_grad`` adds LSQ's gradient scale).
Rounding is round-half-to-even (torch.round), as in ONNX QuantizeLinear and PT2E.
Scales never fall below ``EPS`` so an all-zero tensor quantizes to zeros, not NaN.

Broadcasting: ``s`` and ``z`` are given in a shape that broadcasts against ``x``
(per-tensor: scalars; per-channel along axis 0 of a [N, K] weight: [N, 1]; per-group of size
g: [N, K/g, 1] against x viewed as [N, K/g, g]). ``weight_qparams`` returns that shape.
"""

from __future__ import annotations

import torch

from lowbit.config import PerChannel, PerGroup, PerTensor, QuantSpec
from lowbit.errors import ConfigError

__all__ = ["EPS", "qparams_from_range", "quantize", "dequantize", "fake_quantize", "round_ste", "weight_grid",
           "weight_qparams", "quantize_weight", "group_view", "per_token_qparams", "scale_grad"]

EPS = torch.finfo(torch.float32).eps


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def scale_grad(scale: torch.Tensor, factor: float) -> torch.Tensor:
    """``scale`` in the forward pass, its gradient multiplied by ``factor`` in the backward pass:
    LSQ's step-size gradient scale (Esser et al. 2020), ``factor = 1 / sqrt(n * qmax)`` for a
    scale shared by ``n`` elements, keeps a learned scale's updates in proportion to the
    weights' when both train with one learning rate."""
    return (scale - scale * factor).detach() + scale * factor


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int,
                       symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int64) for ranges ``lo``/``hi`` (any matching shape)."""
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros(()))
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = (amax / ((qmax - qmin) / 2)).clamp(min=EPS)
        zp = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int64)
    return scale, zp


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
             dtype: torch.dtype = torch.int8) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale) + zp, qmin, qmax).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    return (q.to(torch.float32) - zp) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int,
                  qmax: int) -> torch.Tensor:
    """Differentiable quantize-dequantize (STE through round; clamp zeroes gradients outside)."""
    zp = zp.to(x.dtype)
    q = torch.clamp(round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def group_view(w: torch.Tensor, size: int) -> torch.Tensor:
    """[N, K] -> [N, K/size, size]; the caller has checked that size divides K."""
    n, k = w.shape
    return w.reshape(n, k // size, size)


def _check_weight(w: torch.Tensor, spec: QuantSpec, name: str) -> None:
    g = spec.granularity
    if isinstance(g, PerGroup):
        if w.dim() != 2:
            raise ConfigError(f"{name}: PerGroup needs a 2-D weight, got shape {tuple(w.shape)}")
        if w.shape[1] % g.size:
            raise ConfigError(f"{name}: PerGroup(size={g.size}) does not divide the input "
                              f"dimension {w.shape[1]} of weight {tuple(w.shape)}")
    if isinstance(g, PerChannel) and not -w.dim() <= g.axis < w.dim():
        raise ConfigError(f"{name}: PerChannel(axis={g.axis}) out of range for weight "
                          f"{tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ConfigError(f"{name}: weight holds NaN or inf")


def weight_qparams(w: torch.Tensor, spec: QuantSpec, name: str = "weight"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max qparams of a weight, shaped to broadcast as described in the module docstring.

    Per-channel scales come back as [N, 1, ...] (for axis 0); per-group as [N, K/g, 1].
    """
    _check_weight(w, spec, name)
    w = w.detach().float()
    g = spec.granularity
    if isinstance(g, PerTensor):
        lo, hi = w.min(), w.max()
    elif isinstance(g, PerChannel):
        axis = g.axis % w.dim()
        dims = [d for d in range(w.dim()) if d != axis]
        lo, hi = w.amin(dim=dims, keepdim=True), w.amax(dim=dims, keepdim=True)
    elif isinstance(g, PerGroup):
        wg = group_view(w, g.size)
        lo, hi = wg.amin(dim=-1, keepdim=True), wg.amax(dim=-1, keepdim=True)
    else:
        raise ConfigError(f"{name}: {type(g).__name__} is not a weight granularity")
    return qparams_from_range(lo, hi, *_weight_grid(spec), spec.symmetric)


def _weight_grid(spec: QuantSpec) -> tuple[int, int]:
    """Weights use a restricted symmetric grid [-(2^(b-1)-1), 2^(b-1)-1] (zero exactly in the
    middle, as PT2E and onnxruntime do for int8 weights)."""
    if spec.symmetric:
        return -(2 ** (spec.bits - 1) - 1), 2 ** (spec.bits - 1) - 1
    return 0, 2 ** spec.bits - 1


def weight_grid(spec: QuantSpec) -> tuple[int, int]:
    return _weight_grid(spec)


def quantize_weight(w: torch.Tensor, spec: QuantSpec, name: str = "weight"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer weight (int8 storage for signed grids, uint8 for affine), scale, zero point.

    The integer tensor has the weight's shape; scale/zp keep the broadcast shapes of
    ``weight_qparams``.
    """
    scale, zp = weight_qparams(w, spec, name)
    qmin, qmax = _weight_grid(spec)
    dtype = torch.int8 if spec.symmetric else torch.uint8
    w = w.detach().float()
    if isinstance(spec.granularity, PerGroup):
        q = quantize(group_view(w, spec.granularity.size), scale, zp, qmin, qmax, dtype)
        return q.reshape(w.shape), scale, zp
    return quantize(w, scale, zp, qmin, qmax, dtype), scale, zp


def per_token_qparams(x: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token int8 qparams, exactly as ``quantized_decomposed`` computes them:
    symmetric ``choose_qparams_per_token`` (s = max(|x|, 1e-5) / 127, z = 0) or affine
    ``choose_qparams_per_token_asymmetric`` (grid [-128, 127], XNNPACK zero-point choice)."""
    x = x.detach()
    if symmetric:
        scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-5).div(127)
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    qmin, qmax = -128, 127
    lo = torch.amin(x, dim=-1, keepdim=True).clamp(max=0)
    hi = torch.amax(x, dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=EPS)
    dmin, dmax = lo / scale, hi / scale
    zp = torch.where((qmin + dmin) + (qmax + dmax) > 0, qmin - dmin, qmax - dmax)
    return scale.float(), torch.clamp(zp, qmin, qmax).round().to(torch.int64)
