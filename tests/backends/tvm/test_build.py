"""The pipelines' own legalizations (pipelines/common.py), against numpy."""

import numpy as np
import pytest
import tvm
from tvm import relax

from lowbit.backends.tvm.pipelines import build, prepare, schedule
from lowbit.backends.tvm.target import host_target


@pytest.mark.parametrize("dtype,exclusive,axis", [("int64", False, -1), ("float32", True, 0),
                                                  ("int32", False, 1)])
def test_cumsum_legalized(dtype, exclusive, axis):
    target = host_target()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 17), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.cumsum(x, axis=axis, exclusive=exclusive))
        bb.emit_func_output(y)
    ex = build(schedule(prepare(bb.get(), target), target), target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    data = np.random.default_rng(0).integers(-5, 6, (3, 17)).astype(dtype)
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    want = np.cumsum(data, axis=axis)
    if exclusive:
        want = want - data
    np.testing.assert_array_equal(got, want.astype(dtype))
