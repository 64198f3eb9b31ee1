"""Integer kernels alone (default schedules) against numpy, and the weight packing.

linear_u8s8: the int32 accumulator (scale = 1, bias = 0, |acc| < 2^24 so f32 holds it exactly)
must equal numpy's int64 ``x_u8 @ w_i8^T - corr`` bit for bit; with a real epilogue the fp32
result may differ from numpy's by FMA contraction only (a few ulp: rtol 1e-6).
linear_w4a16: fp32 sums in another order than numpy's float64 reference: rtol 1e-5 of the
output range (K <= 256 terms of size ~1e-2).
"""

import numpy as np
import pytest
import torch
import tvm

from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.lowering.pack import pack_int4, pack_vnni, unpack_int4, unpack_vnni
from lowbit.backends.tvm.target import host_target

TARGET = host_target()
pytestmark = pytest.mark.skipif(
    isa_of(TARGET) is None, reason="host without AVX2: no int8 kernels")


def _build(func):
    sch = kernels.default_schedule(func, TARGET)
    assert sch is not None
    return tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), TARGET)


def _run(lib, arrays):
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def _u8s8_inputs(m, n, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    corr = (131 * w.astype(np.int64).sum(1)).astype(np.int32)
    w_vnni = pack_vnni(torch.from_numpy(w)).numpy()
    return x, w, w_vnni, corr


@pytest.mark.parametrize("m,n,k", [(32, 64, 64), (16, 40, 128), (1, 48, 32), (128, 384, 384)])
def test_linear_u8s8_int32_exact(m, n, k):
    x, w, w_vnni, corr = _u8s8_inputs(m, n, k)
    lib = _build(kernels.linear_u8s8(m, n, k))
    got = _run(lib, [x, w_vnni, corr, np.ones(n, np.float32), np.zeros(n, np.float32),
                     np.zeros((m, n), np.float32)])
    want = x.astype(np.int64) @ w.astype(np.int64).T - corr
    assert np.abs(want).max() < 2**24
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_linear_u8s8_epilogue():
    m, n, k = 24, 80, 96
    x, _, w_vnni, corr = _u8s8_inputs(m, n, k, seed=1)
    rng = np.random.default_rng(2)
    scale = (rng.random(n) * 1e-3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = _run(_build(kernels.linear_u8s8(m, n, k)),
               [x, w_vnni, corr, scale, bias, np.zeros((m, n), np.float32)])
    want = kernels.reference_linear_u8s8(x, w_vnni, corr, scale, bias)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act", kernels.ACTIVATIONS)
def test_linear_u8s8_q_requantizing_epilogue(act):
    """The u8 output of the fused act + quantize epilogue against numpy (exact erf/tanh): at
    most one step off, on at most check.REQUANT_TIE_FRACTION of the outputs; the output grid
    is chosen from the float result so the codes cover 0..255."""
    from lowbit.backends.tvm.check import check_schedule

    m, n, k = 32, 96, 128
    func = kernels.linear_u8s8_q(m, n, k, act)
    sch = kernels.default_schedule(func, TARGET)
    result = check_schedule(func, sch.mod["main"], TARGET)
    assert result.ok, result.detail
    assert "T.vectorized" in sch.mod["main"].script()


def test_linear_u8s8_q_bad_options():
    with pytest.raises(ValueError, match="activation"):
        kernels.linear_u8s8_q(4, 16, 16, "swish")
    with pytest.raises(ValueError, match="u8 grid"):
        kernels.linear_u8s8_q(4, 16, 16, "none", -128, 127)


def test_linear_u8s8_refuses_k_not_multiple_of_4():
    with pytest.raises(ValueError, match="K % 4"):
        kernels.linear_u8s8(4, 16, 30)


@pytest.mark.parametrize("m,n,k,g", [(32, 48, 128, 32), (1, 64, 256, 128), (5, 24, 64, 64),
                                     (4, 40, 128, 32), (1, 256, 512, 128)])
def test_linear_w4a16(m, n, k, g):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q = rng.integers(-7, 8, (n, k)).astype(np.int8)
    s = (rng.random((n, k // g)) * 0.01).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    w = pack_int4(torch.from_numpy(q)).numpy()
    got = _run(_build(kernels.linear_w4a16(m, n, k, g)),
               [x, w, np.ascontiguousarray(s.T), bias, np.zeros((m, n), np.float32)])
    want = x.astype(np.float64) @ (q.astype(np.float64) * np.repeat(s, g, axis=1)).T + bias
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_packing_round_trips():
    g = torch.Generator().manual_seed(0)
    w8 = torch.randint(-127, 128, (40, 12), generator=g, dtype=torch.int8)
    packed = pack_vnni(w8)
    assert packed.shape == (3, 3, 16, 4)
    assert torch.equal(packed[0, 1, 2], w8[2, 4:8])          # 16 rows x 4 deep, contiguous
    assert torch.equal(unpack_vnni(packed, 40), w8)
    assert not packed[2, :, 8:].any()                          # padded rows are zero
    w4 = torch.randint(-7, 8, (6, 10), generator=g, dtype=torch.int8)
    p4 = pack_int4(w4)
    assert p4.shape == (5, 6) and p4.dtype == torch.uint8
    assert torch.equal(unpack_int4(p4), w4)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.full((2, 2), 9, dtype=torch.int8))
