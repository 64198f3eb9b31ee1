"""Calibration observers: constant memory however much data flows through.

    MinMax:        lo = min over all x,  hi = max over all x
    MovingAverage: lo <- (1 - m) lo + m min(x_t)   (the first batch initialises)
    Percentile:    lo, hi = the (100 - p)th and p-th percentiles of a streaming histogram
    MSE:           [c lo, c hi] with c in (0, 1] minimising sum_bins n_b (fq(x_b) - x_b)^2

The streaming histogram covers [-R, R] in B bins; when data exceeds R, R doubles (as often as
needed) and adjacent bins merge pairwise, so counts are exact up to bin width and memory is
O(B). ``per_channel=True`` (MinMax / MovingAverage only) tracks ranges along the last axis,
as PEG needs. Any NaN or inf raises CalibrationError naming the site.
"""

from __future__ import annotations

import math

import torch

from lowbit.config import MSE, MinMax, MovingAverage, Observer, Percentile
from lowbit.errors import CalibrationError, ConfigError
from lowbit.quant.numerics import fake_quantize, qparams_from_range

__all__ = ["RangeObserver", "make_observer", "StreamingHistogram"]


class RangeObserver:
    """Base: ``update(x)`` per batch, ``range()`` -> (lo, hi) tensors."""

    def __init__(self, site: str, per_channel: bool = False):
        self.site = site
        self.per_channel = per_channel
        self.batches = 0

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if x.numel() == 0:
            raise CalibrationError(f"observer at {self.site}: received an empty tensor")
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).sum().item()
            raise CalibrationError(f"observer at {self.site}: {bad} NaN/inf value(s) in "
                                   f"calibration batch {self.batches + 1}")
        return x

    def _minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.per_channel:
            flat = x.reshape(-1, x.shape[-1])
            return flat.amin(0), flat.amax(0)
        return x.min(), x.max()

    def update(self, x: torch.Tensor) -> None:
        x = self._checked(x)
        self._update(x)
        self.batches += 1

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches == 0:
            raise CalibrationError(f"observer at {self.site}: no calibration data reached it")
        return self._range()

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MinMaxObserver(RangeObserver):
    def __init__(self, site: str, per_channel: bool = False):
        super().__init__(site, per_channel)
        self.lo = self.hi = None

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = self._minmax(x)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _range(self):
        return self.lo, self.hi


class MovingAverageObserver(MinMaxObserver):
    def __init__(self, site: str, momentum: float, per_channel: bool = False):
        super().__init__(site, per_channel)
        self.momentum = momentum

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = self._minmax(x)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = (1 - m) * self.lo + m * lo
            self.hi = (1 - m) * self.hi + m * hi


class StreamingHistogram:
    """Histogram over [-R, R] with ``bins`` bins (a power of two); R doubles on overflow."""

    def __init__(self, bins: int):
        if bins & (bins - 1):
            raise ConfigError(f"histogram bins must be a power of two, got {bins}")
        self.bins = bins
        self.radius = 0.0
        self.counts = torch.zeros(bins, dtype=torch.float64)

    def _grow(self, need: float) -> None:
        if self.radius == 0.0:
            self.radius = 2.0 ** math.ceil(math.log2(max(need, 1e-30)))
            return
        k = math.ceil(math.log2(need / self.radius))
        if k <= 0:
            return
        f = 2 ** min(k, int(math.log2(self.bins)))
        merged = self.counts.reshape(-1, f).sum(1)          # bins / f bins, old range
        new = torch.zeros_like(self.counts)
        start = (self.bins - merged.numel()) // 2
        new[start:start + merged.numel()] = merged
        self.counts = new
        self.radius *= 2 ** k

    def add(self, x: torch.Tensor) -> None:
        amax = x.abs().max().item()
        if amax > self.radius or self.radius == 0.0:
            self._grow(max(amax, 1e-30))
        self.counts += torch.histc(x.double().flatten(), self.bins, -self.radius, self.radius)

    def centers(self) -> torch.Tensor:
        w = 2 * self.radius / self.bins
        return -self.radius + w * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def quantile(self, q: float) -> float:
        cdf = torch.cumsum(self.counts, 0) / self.counts.sum()
        idx = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).item())
        return float(self.centers()[min(idx, self.bins - 1)])


class HistogramObserver(RangeObserver):
    """Exact min/max plus a streaming histogram; subclasses pick the range from it."""

    def __init__(self, site: str, bins: int):
        super().__init__(site, per_channel=False)
        self.hist = StreamingHistogram(bins)
        self.minmax = MinMaxObserver(site)

    def _update(self, x: torch.Tensor) -> None:
        self.minmax._update(x)
        self.hist.add(x)


class PercentileObserver(HistogramObserver):
    def __init__(self, site: str, percentile: float, bins: int):
        super().__init__(site, bins)
        self.p = percentile / 100.0

    def _range(self):
        lo, hi = self.minmax.lo, self.minmax.hi
        qlo, qhi = self.hist.quantile(1 - self.p), self.hist.quantile(self.p)
        return torch.maximum(lo, torch.tensor(qlo)), torch.minimum(hi, torch.tensor(qhi))


class MSEObserver(HistogramObserver):
    """Grid search over shrink factors c of the min-max range (needs qmin/qmax/symmetric)."""

    def __init__(self, site: str, grid: int, bins: int, qmin: int, qmax: int, symmetric: bool):
        super().__init__(site, bins)
        self.grid, self.qmin, self.qmax, self.symmetric = grid, qmin, qmax, symmetric

    def _range(self):
        lo, hi = self.minmax.lo.double(), self.minmax.hi.double()
        c = torch.linspace(1.0 / self.grid, 1.0, self.grid, dtype=torch.float64)
        scale, zp = qparams_from_range((c * lo).float(), (c * hi).float(), self.qmin, self.qmax,
                                       self.symmetric)
        x = self.hist.centers().float()[None, :]
        err = (fake_quantize(x, scale[:, None], zp[:, None], self.qmin, self.qmax) - x) ** 2
        best = int(torch.argmin((err.double() * self.hist.counts[None, :]).sum(1)))
        return (c[best] * lo).float(), (c[best] * hi).float()


def make_observer(cfg: Observer, site: str, *, qmin: int, qmax: int, symmetric: bool,
                  per_channel: bool = False) -> RangeObserver:
    """The observer a config asks for, at a named site (for error messages)."""
    if per_channel and not isinstance(cfg, (MinMax, MovingAverage)):
        raise ConfigError(f"{site}: per-channel ranges (PEG) need a MinMax or MovingAverage "
                          f"observer, got {type(cfg).__name__}")
    if isinstance(cfg, MinMax):
        return MinMaxObserver(site, per_channel)
    if isinstance(cfg, MovingAverage):
        return MovingAverageObserver(site, cfg.momentum, per_channel)
    if isinstance(cfg, Percentile):
        return PercentileObserver(site, cfg.percentile, cfg.bins)
    if isinstance(cfg, MSE):
        return MSEObserver(site, cfg.grid, cfg.bins, qmin, qmax, symmetric)
    raise ConfigError(f"{site}: unknown observer config {cfg!r}")
