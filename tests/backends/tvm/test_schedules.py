"""Default CPU schedules: which rule takes a kernel, and that the scheduled kernel computes
what the unscheduled definition does (check.check_schedule builds both and compares)."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax, tirx
from tvm.script import relax as R

from lowbit.backends.tvm.check import check_schedule
from lowbit.backends.tvm.schedules.cpu import RowReduction, default_schedule_of
from lowbit.backends.tvm.target import host_target


def _prim_func(build_relax) -> tirx.PrimFunc:
    """The one PrimFunc LegalizeOps + FuseOps + FuseTIR make of a small Relax function."""
    mod = tvm.IRModule({"main": build_relax})
    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(),
                                    relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FuseOps(), relax.transform.FuseTIR()])
    mod = seq(mod)
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert len(funcs) == 1, [gv.name_hint for gv, _ in mod.functions_items()]
    return funcs[0]


@R.function
def _layer_norm(x: R.Tensor((64, 384), "float32"), g: R.Tensor((384,), "float32"),
                b: R.Tensor((384,), "float32")):
    return R.nn.layer_norm(x, g, b, axes=[-1])


@R.function
def _masked_softmax(s: R.Tensor((1, 4, 32, 128), "float32"), keep: R.Tensor((1, 1, 1, 128), "bool")):
    with R.dataflow():
        p = R.nn.softmax(s, axis=-1)
        y = R.where(keep, p, R.const(0.0, "float32"))
        R.output(y)
    return y


@R.function
def _rms_norm(x: R.Tensor((16, 256), "float32"), w: R.Tensor((256,), "float32")):
    return R.nn.rms_norm(x, w, axes=[-1])


@pytest.mark.parametrize("fn", [_layer_norm, _masked_softmax, _rms_norm],
                         ids=["layer_norm", "masked_softmax", "rms_norm"])
def test_row_reduction_matches_definition(fn):
    target = host_target()
    func = _prim_func(fn)
    with target:
        sch = RowReduction().apply(func, target, False)
    assert sch is not None, "RowReduction declined a row-wise reduction"
    scheduled = sch.mod["main"]
    text = scheduled.script()
    assert "_rf" in text and "T.vectorized" in text and "T.parallel" in text
    result = check_schedule(func, scheduled, target)
    assert result.ok, result.detail


def test_row_reduction_declines_non_row_work():
    """A plain elementwise function and a matmul are not its business."""
    @R.function
    def add(x: R.Tensor((8, 32), "float32"), y: R.Tensor((8, 32), "float32")):
        return R.add(x, y)

    target = host_target()
    with target:
        assert RowReduction().apply(_prim_func(add), target, False) is None


def test_default_rules_schedule_layer_norm_with_rfactor():
    target = host_target()
    scheduled = default_schedule_of(_prim_func(_layer_norm), target)
    assert scheduled is not None and "_rf" in scheduled.script()
