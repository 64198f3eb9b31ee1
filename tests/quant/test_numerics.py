"""Quantization math: grids, round trips, STE gradients, weight granularities."""

import pytest
import torch

from lowbit.config import PerChannel, PerGroup, PerTensor, QuantSpec
from lowbit.errors import ConfigError
from lowbit.quant.numerics import (
    dequantize, fake_quantize, per_token_qparams, qparams_from_range, quantize, quantize_weight,
    weight_qparams,
)


def test_affine_range_maps_to_grid_ends():
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
    assert scale.item() == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp.item() == 64  # round(1 / (4/255)) = round(63.75)
    q = quantize(torch.tensor([-1.0, 0.0, 3.0]), scale, zp, 0, 255, torch.uint8)
    assert q.tolist() == [0, 64, 255]
    assert dequantize(q, scale, zp)[1].item() == 0.0  # zero is exact


def test_symmetric_and_degenerate_ranges():
    scale, zp = qparams_from_range(torch.tensor(-2.0), torch.tensor(1.0), -128, 127, True)
    assert zp.item() == 0 and scale.item() == pytest.approx(2.0 / 127.5, rel=1e-6)
    scale, zp = qparams_from_range(torch.tensor(0.0), torch.tensor(0.0), 0, 255, False)
    assert torch.isfinite(scale) and scale > 0
    x = torch.zeros(4)
    assert torch.equal(fake_quantize(x, scale, zp, 0, 255), x)


def test_fake_quant_error_is_half_a_step_inside_range():
    torch.manual_seed(0)
    x = torch.rand(10000) * 6 - 2
    scale, zp = qparams_from_range(x.min(), x.max(), 0, 255, False)
    err = (fake_quantize(x, scale, zp, 0, 255) - x).abs().max()
    assert err <= scale * 0.5 + 1e-6


def test_ste_gradients_flow_to_input_and_scale():
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    scale = torch.tensor(0.02, requires_grad=True)  # range +-2.56: |x| > 2.56 clips
    y = fake_quantize(x, scale, torch.tensor(0), -128, 127)
    y.sum().backward()
    inside = (x.detach() > -2.56) & (x.detach() < 2.54)  # clamp bounds: -128 s, 127 s
    assert torch.all(x.grad[inside] == 1.0) and torch.all(x.grad[~inside] == 0.0)
    assert scale.grad is not None and scale.grad != 0


@pytest.mark.parametrize("gran, scale_shape", [
    (PerTensor(), ()), (PerChannel(0), (16, 1)), (PerGroup(32), (16, 2, 1)),
])
def test_weight_granularities(gran, scale_shape):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    spec = QuantSpec(bits=4, granularity=gran)
    scale, zp = weight_qparams(w, spec)
    assert tuple(scale.shape) == scale_shape and torch.all(zp == 0)
    q, s, z = quantize_weight(w, spec)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert q.min() >= -7 and q.max() <= 7  # restricted symmetric int4 grid
    # every row (channel) reaches the grid end at its absmax
    if not isinstance(gran, PerTensor):
        assert torch.all(q.abs().amax(1) == 7)


def test_weight_group_must_divide():
    with pytest.raises(ConfigError, match=r"PerGroup\(size=128\) does not divide .* 96"):
        weight_qparams(torch.randn(8, 96), QuantSpec(bits=4, granularity=PerGroup(128)), "w")


def test_weight_nan_refused():
    w = torch.randn(4, 4)
    w[1, 2] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        weight_qparams(w, QuantSpec(granularity=PerChannel()), "layer.weight")


def test_per_token_matches_quantized_decomposed():
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    qd = torch.ops.quantized_decomposed
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3 + 0.5
    for symmetric, op in ((True, qd.choose_qparams_per_token),
                          (False, qd.choose_qparams_per_token_asymmetric)):
        s_ref, z_ref = op(x, torch.int8)
        s, z = per_token_qparams(x, symmetric)
        torch.testing.assert_close(s, s_ref.float(), rtol=1e-6, atol=0)
        assert torch.equal(z, z_ref.to(torch.int64))
