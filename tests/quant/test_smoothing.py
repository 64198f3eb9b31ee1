"""lowbit.quant.smoothing: the SmoothQuant closed form and the fold arithmetic both IRs use.

Each fold is checked against the function it must preserve, in float64 (so the tolerance is
float64 rounding), in both weight layouts, and on torch tensors and numpy arrays alike.
"""

import numpy as np
import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.quant.smoothing import (
    CLAMP,
    absmax_from_range,
    fold_bias,
    fold_consumer_weight,
    fold_norm_param,
    fold_producer_weight,
    smoothquant_scale,
    weight_in_absmax,
)

GEN = torch.Generator().manual_seed(0)
K, N = 6, 5
W_OUT_IN = torch.randn(N, K, generator=GEN, dtype=torch.float64)     # nn.Linear, Gemm transB
X = torch.randn(4, K, generator=GEN, dtype=torch.float64)
A = torch.exp(torch.randn(K, generator=GEN, dtype=torch.float64))


def test_closed_form_over_consumers_and_layouts():
    w2 = torch.randn(3, K, generator=GEN)
    x_absmax = torch.rand(K, generator=GEN) * 10
    for alpha in (0.0, 0.5, 0.8, 1.0):
        a = smoothquant_scale(x_absmax, [(W_OUT_IN, "out_in"), (w2.T, "in_out")], alpha)
        w = torch.maximum(W_OUT_IN.abs().amax(0), w2.double().abs().amax(0))
        expect = x_absmax.double() ** alpha / w ** (1 - alpha)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), expect, rtol=1e-6, atol=0)
    np_a = smoothquant_scale(x_absmax.numpy(), [(W_OUT_IN.numpy(), "out_in")], 0.5)
    torch.testing.assert_close(np_a, smoothquant_scale(x_absmax, [(W_OUT_IN, "out_in")], 0.5))


def test_clamps_and_validation():
    a = smoothquant_scale(torch.tensor([0.0, 1e12]), [(torch.tensor([[1.0, 1e-12]]), "out_in")],
                          1.0)
    assert a.tolist() == pytest.approx([CLAMP[0], CLAMP[1]])
    with pytest.raises(ConfigError, match="alpha"):
        smoothquant_scale(torch.ones(2), [], 1.5)
    with pytest.raises(ConfigError, match="layout"):
        weight_in_absmax(torch.ones(2, 2), "rows")


def test_consumer_fold_preserves_the_linear():
    for w, layout in ((W_OUT_IN, "out_in"), (W_OUT_IN.T.contiguous(), "in_out")):
        wt = w if layout == "out_in" else w.T          # as [N, K]
        w2 = fold_consumer_weight(w, A, layout)
        w2t = w2 if layout == "out_in" else w2.T
        torch.testing.assert_close((X / A) @ w2t.T, X @ wt.T, rtol=1e-12, atol=1e-12)


def test_producer_fold_divides_output_channels():
    """Linear producer with K outputs: (x W_p^T + b_p) / a == x W_p'^T + b_p'."""
    x = torch.randn(3, N, generator=GEN, dtype=torch.float64)
    wp = torch.randn(K, N, generator=GEN, dtype=torch.float64)       # out_in: [K out, N in]
    bp = torch.randn(K, generator=GEN, dtype=torch.float64)
    ref = (x @ wp.T + bp) / A
    torch.testing.assert_close(x @ fold_producer_weight(wp, A, "out_in").T + fold_bias(bp, A),
                               ref, rtol=1e-12, atol=1e-12)
    got = x @ fold_producer_weight(wp.T.contiguous(), A, "in_out") + fold_bias(bp, A)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_norm_params_plain_and_gemma_offset():
    normed = torch.randn(4, K, generator=GEN, dtype=torch.float64)
    g, b = torch.randn(K, generator=GEN, dtype=torch.float64), torch.randn(K, dtype=torch.float64)
    torch.testing.assert_close(normed * fold_norm_param(g, A) + fold_norm_param(b, A),
                               (normed * g + b) / A, rtol=1e-12, atol=1e-12)
    w = fold_norm_param(g, A, offset=1.0)                            # Gemma: x * (1 + w)
    torch.testing.assert_close(normed * (1 + w), normed * (1 + g) / A, rtol=1e-12, atol=1e-12)


def test_dtypes_and_array_kinds_round_trip():
    w32 = W_OUT_IN.float()
    out = fold_consumer_weight(w32, A.float(), "out_in")
    assert out.dtype == torch.float32 and out.shape == w32.shape
    arr = fold_consumer_weight(w32.numpy(), A.float().numpy(), "out_in")
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, out.numpy())       # same float64 math, same rounding
    ro = w32.numpy().copy()
    ro.flags.writeable = False                             # onnx_ir hands out read-only arrays
    np.testing.assert_array_equal(fold_consumer_weight(ro, A.float().numpy(), "out_in"), arr)
    lo, hi = torch.tensor([-3.0, 0.0]), torch.tensor([1.0, 2.0])
    assert absmax_from_range(lo, hi).tolist() == [3.0, 2.0]
    assert absmax_from_range(lo.numpy(), hi.numpy()).tolist() == [3.0, 2.0]
