"""The PEG group-wise int8 GEMM alone (default schedule) against numpy: exact per-group int32
accumulators (scale 1, bias 0, one group's sum fits fp32 exactly) and the real epilogue."""

import numpy as np
import pytest
import torch
import tvm

from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.check import check_schedule
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.lowering.pack import pack_vnni
from lowbit.backends.tvm.kernels.peg import linear_u8s8_peg, reference_linear_u8s8_peg
from lowbit.backends.tvm.target import host_target

TARGET = host_target()
pytestmark = pytest.mark.skipif(
    isa_of(TARGET) is None, reason="host without AVX2: no int8 kernels")


@pytest.mark.parametrize("m,n,k,groups", [(16, 48, 96, 3), (128, 384, 384, 6), (1, 48, 64, 4)])
def test_group_gemm_matches_numpy(m, n, k, groups):
    func = linear_u8s8_peg(m, n, k, groups)
    sch = kernels.default_schedule(func, TARGET)
    assert sch is not None and "T.parallel" in sch.mod["main"].script()
    result = check_schedule(func, sch.mod["main"], TARGET)
    assert result.ok, result.detail


def test_group_accumulators_exact():
    m, n, k, groups = 8, 32, 64, 4
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    zp = np.array([3, 200, 128, 0])
    kg = k // groups
    corr = np.stack([zp[g] * w[:, g * kg:(g + 1) * kg].astype(np.int64).sum(1)
                     for g in range(groups)]).astype(np.int32)
    args = [x, pack_vnni(torch.from_numpy(w)).numpy(), corr, np.ones((groups, n), np.float32),
            np.zeros(n, np.float32), np.zeros((m, n), np.float32)]
    sch = kernels.default_schedule(linear_u8s8_peg(m, n, k, groups), TARGET)
    lib = tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), TARGET)
    dev = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*dev)
    want = sum(x[:, g * kg:(g + 1) * kg].astype(np.int64) @ w[:, g * kg:(g + 1) * kg].T.astype(
        np.int64) - corr[g].astype(np.int64) for g in range(groups))
    np.testing.assert_array_equal(dev[-1].numpy().astype(np.int64), want)
    np.testing.assert_array_equal(reference_linear_u8s8_peg(*args[:-1]).astype(np.int64), want)


def test_bad_groups():
    with pytest.raises(ValueError, match="multiple of 4"):
        linear_u8s8_peg(4, 16, 24, 4)
