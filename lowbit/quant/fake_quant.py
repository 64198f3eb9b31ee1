"""FakeQuantize: the module that prepared graphs carry at every quantized tensor.

Life cycle (PT2E style): ``observe`` during calibration (x passes through unchanged, the
observer records ranges) -> ``freeze()`` computes scale and zero point -> fake-quant
(``(clamp(round(x/s) + z) - z) * s`` with straight-through gradients) for evaluation and QAT
-> the convert pass replaces each module with standard ``quantized_decomposed`` q/dq ops
using the frozen parameters. Weights need no calibration: their qparams come from the
weight itself at freeze time (min-max per tensor, channel or group).

With ``spec.learnable`` the scale becomes an ``nn.Parameter`` at freeze time.

PEG (``PerEmbeddingGroup``): the observer tracks per-channel ranges along the last axis;
``freeze`` groups the channels (``lowbit.quant.peg``) and stores per-channel scale and zero
point vectors [C], constant within each group. The grouping follows ``peg_order``: set by the
PegPermute pass once it has folded a permutation (then the groups are contiguous runs of the
channels), else the channels sorted by their own range (``permute=True``) or left in place.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import PerEmbeddingGroup, PerGroup, PerTensor, PerToken, QuantSpec
from lowbit.errors import ConfigError
from lowbit.quant.numerics import (
    fake_quantize, group_view, per_token_qparams, qparams_from_range, weight_grid,
    weight_qparams,
)
from lowbit.quant.observers import make_observer
from lowbit.quant.peg import check_groups, spec_qparams

__all__ = ["FakeQuantize", "check_activation_spec"]


def check_activation_spec(spec: QuantSpec, site: str) -> None:
    """Activation specs every IR supports today (ConfigError naming the site otherwise)."""
    if spec.dynamic and spec.bits != 8:
        raise ConfigError(f"{site}: dynamic activation quantization is int8 only (as "
                          f"quantized_decomposed per-token ops are), got bits={spec.bits}")
    if not spec.dynamic and not isinstance(spec.granularity, (PerTensor, PerEmbeddingGroup)):
        raise ConfigError(f"{site}: static activation granularity "
                          f"{type(spec.granularity).__name__} is not supported yet")


class FakeQuantize(nn.Module):
    """Fake-quant at one site.

    Args:
        spec: how to quantize.
        site: a readable name (node name and role) used in errors and reports.
        is_weight: weights use the restricted symmetric grid and need no observer.
    """

    def __init__(self, spec: QuantSpec, site: str, *, is_weight: bool = False):
        super().__init__()
        self.spec = spec
        self.site = site
        self.is_weight = is_weight
        if is_weight:
            self.qmin, self.qmax = weight_grid(spec)
        else:
            self.qmin, self.qmax = spec.qmin, spec.qmax
            check_activation_spec(spec, site)
        self.observer = None
        if not is_weight and not spec.dynamic:
            self.observer = make_observer(spec.observer, site, qmin=self.qmin, qmax=self.qmax,
                                          symmetric=spec.symmetric, per_channel=self.is_peg)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int64))
        self.peg_order: torch.Tensor | None = None   # set by PegPermute after folding
        self.observing = not is_weight and not spec.dynamic
        self.quantizing = spec.dynamic
        self.frozen = spec.dynamic

    @property
    def is_peg(self) -> bool:
        return not self.is_weight and isinstance(self.spec.granularity, PerEmbeddingGroup)

    def check_channels(self, channels: int) -> None:
        """PEG: K must divide the channel count (ConfigError naming the site)."""
        if self.is_peg:
            check_groups(channels, self.spec.granularity.groups, self.site)

    def extra_repr(self) -> str:
        state = "frozen" if self.frozen else "observing"
        return f"{self.site}: {self.spec.short()} [{state}]"

    def freeze(self, weight: torch.Tensor | None = None) -> None:
        """Fix scale/zero point (from the observer, or from ``weight``) and start fake-quant."""
        if self.spec.dynamic:
            return
        if self.is_weight:
            if weight is None:
                raise ValueError(f"{self.site}: freezing a weight quantizer needs the weight")
            scale, zp = weight_qparams(weight, self.spec, self.site)
        elif self.is_peg:
            lo, hi = self.observer.range()
            scale, zp = spec_qparams(lo, hi, self.spec, self.peg_order, self.site)
        else:
            lo, hi = self.observer.range()
            scale, zp = qparams_from_range(lo, hi, self.qmin, self.qmax, self.spec.symmetric)
        self.scale = scale.detach().clone()
        self.zero_point = zp
        if self.spec.learnable:
            del self.scale
            self.scale = nn.Parameter(scale.detach().clone())
        self.observing, self.quantizing, self.frozen = False, True, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.update(x)
        if not self.quantizing:
            return x
        if self.spec.dynamic:
            if isinstance(self.spec.granularity, PerToken):
                scale, zp = per_token_qparams(x, self.spec.symmetric)
                qmin, qmax = (-127, 127) if self.spec.symmetric else (-128, 127)
            else:
                lo, hi = x.detach().min(), x.detach().max()
                scale, zp = qparams_from_range(lo, hi, self.qmin, self.qmax, self.spec.symmetric)
                qmin, qmax = self.qmin, self.qmax
            return fake_quantize(x, scale, zp, qmin, qmax)
        if isinstance(self.spec.granularity, PerGroup):
            xg = group_view(x, self.spec.granularity.size)
            return fake_quantize(xg, self.scale, self.zero_point, self.qmin,
                                 self.qmax).reshape(x.shape)
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)
