"""Observers: right ranges, constant memory, clear errors on bad data."""

import pytest
import torch

from lowbit.config import MSE, MinMax, MovingAverage, Percentile
from lowbit.errors import CalibrationError
from lowbit.quant.observers import StreamingHistogram, make_observer


def _obs(cfg, **kw):
    return make_observer(cfg, "test.site", qmin=0, qmax=255, symmetric=False, **kw)


def test_minmax_over_batches_and_per_channel():
    o = _obs(MinMax())
    o.update(torch.tensor([[-1.0, 2.0]]))
    o.update(torch.tensor([[0.5, 5.0]]))
    assert [t.item() for t in o.range()] == [-1.0, 5.0]
    pc = _obs(MinMax(), per_channel=True)
    pc.update(torch.tensor([[[-1.0, 2.0], [3.0, -4.0]]]))
    lo, hi = pc.range()
    assert lo.tolist() == [-1.0, -4.0] and hi.tolist() == [3.0, 2.0]


def test_moving_average():
    o = _obs(MovingAverage(momentum=0.5))
    o.update(torch.tensor([0.0, 4.0]))
    o.update(torch.tensor([0.0, 2.0]))
    assert o.range()[1].item() == pytest.approx(3.0)


def test_histogram_growth_keeps_counts():
    h = StreamingHistogram(256)
    h.add(torch.full((100,), 0.3))
    h.add(torch.full((50,), -7.0))   # forces R to grow from 0.5 to 8
    h.add(torch.full((25,), 100.0))  # and to 128
    assert h.counts.sum().item() == 175
    assert h.radius >= 100.0
    assert h.quantile(0.5) == pytest.approx(0.3, abs=2 * h.radius / 256)


def test_percentile_clips_outliers():
    torch.manual_seed(0)
    o = _obs(Percentile(percentile=99.0))
    for _ in range(10):
        x = torch.randn(10000)
        x[0] = 1000.0  # one outlier per batch: 0.01 % of the data
        o.update(x)
    lo, hi = o.range()
    assert 1.8 < hi.item() < 3.0 and -3.0 < lo.item() < -1.8  # N(0,1) 1st/99th pct: +-2.33


def test_mse_shrinks_range_on_heavy_tails():
    torch.manual_seed(0)
    o = make_observer(MSE(), "t", qmin=-8, qmax=7, symmetric=True)
    x = torch.randn(100000)
    x[:10] = 50.0
    o.update(x)
    lo, hi = o.range()
    assert hi.item() < 50.0 * 0.5  # 4-bit: clipping the 10 outliers beats a 50-wide grid
    assert hi.item() > 1.0


def test_memory_constant_in_batches():
    """The observer's state has the same size after 5 and 500 batches."""
    def state_bytes(o):
        total = 0
        for v in vars(o).values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif hasattr(v, "__dict__") and not isinstance(v, type):
                total += state_bytes(v)
        return total

    for cfg in (MinMax(), MovingAverage(), Percentile(), MSE()):
        o = _obs(cfg)
        sizes = []
        for i in range(500):
            o.update(torch.randn(64, 32) * (1 + i))
            if i + 1 in (5, 500):
                sizes.append(state_bytes(o))
        assert sizes[0] == sizes[1], cfg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_named(bad):
    o = _obs(MinMax())
    o.update(torch.ones(3))
    x = torch.ones(4)
    x[2] = bad
    with pytest.raises(CalibrationError, match=r"test.site: 1 NaN/inf value\(s\) in calibration batch 2"):
        o.update(x)


def test_no_data_and_empty_tensor():
    o = _obs(MinMax())
    with pytest.raises(CalibrationError, match="no calibration data reached it"):
        o.range()
    with pytest.raises(CalibrationError, match="empty tensor"):
        o.update(torch.empty(0))
