"""Stages every target shares: the Relax passes between import and scheduling.

    prepare_passes:  LiftTransformParams (weight-only work, e.g. fp32 weight transposes and
                     leftover weight dequantization, moves to ``main_transform_params``, run
                     once at load), DecomposeGelu + FastMathTransform (vectorizable
                     exp/erf/tanh polynomials instead of scalar libm calls: 2 ms -> 0.2 ms for
                     a MiniLM FFN GELU), LegalizeOps (with a ``relax.cumsum`` legalization TVM
                     0.27 lacks), FuseOps, FuseTIR

FuseOps never swallows an integer kernel: they are marked opaque (kernels/registry.OPAQUE), so
each keeps its registered or tuned schedule.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

__all__ = ["decompose_gelu", "prepare", "prepare_passes"]


@expr_functor.mutator
class _GeluToErf(PyExprMutator):
    """``gelu(x) = x * (0.5 + 0.5 * erf(x / sqrt(2)))`` in Relax ops (what LegalizeOps would
    emit), so that FastMathTransform can replace the erf."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.gelu":
            x = call.args[0]
            dtype = x.ty.dtype

            def c(v):
                return relax.const(v, dtype)

            erf = self.builder_.emit(relax.op.erf(relax.op.multiply(x, c(0.7071067811865476))))
            half = self.builder_.emit(relax.op.add(c(0.5), relax.op.multiply(erf, c(0.5))))
            return relax.op.multiply(x, half)
        return call


@tvm.transform.module_pass(opt_level=0, name="DecomposeGelu")
def decompose_gelu(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    mutator = _GeluToErf(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def _legalize_cumsum(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """TVM 0.27 has no legalization for ``relax.cumsum`` (HF causal masks use it): an inclusive
    or exclusive prefix sum along one axis as a masked reduction, O(n^2) in that axis (a
    sequence length here)."""
    from tvm import te, topi  # noqa: F401  (topi registers te helpers)

    x = call.args[0]
    attrs = call.attrs
    ndim = len(x.ty.shape.values)
    axis = int(attrs.axis) if attrs.axis is not None else -1
    axis = axis % ndim
    dtype = str(attrs.dtype) if attrs.dtype is not None else str(x.ty.dtype)
    exclusive = bool(attrs.exclusive) if attrs.exclusive is not None else False

    def compute(data):
        n = data.shape[axis]
        r = te.reduce_axis((0, n), name="j")

        def body(*idx):
            i = idx[axis]
            keep = r < i if exclusive else r <= i
            src = list(idx)
            src[axis] = r
            return te.sum(tvm.tirx.Select(keep, data[tuple(src)].astype(dtype),
                                          tvm.tirx.const(0, dtype)), axis=r)

        return te.compute(data.shape, body, name="cumsum")

    return bb.call_te(compute, x, primfunc_name_hint="cumsum")


def prepare_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Lift parameter transforms, legalize and fuse; PrimFuncs come out unscheduled."""
    return [
        relax.transform.LiftTransformParams(),
        decompose_gelu,
        relax.transform.FastMathTransform(),
        relax.transform.LegalizeOps({"relax.cumsum": _legalize_cumsum}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Run ``prepare_passes`` on ``mod`` under ``target``."""
    with target:
        return tvm.transform.Sequential(prepare_passes(target))(mod)
