"""The CPU (LLVM) pipeline: the stages of ``lowbit.compile`` for x86 targets, in order.

    fx_passes       LegalizeQuantLinear with requantizing epilogues, FuseSiblingLinears
    ONNX_INT8       the ONNX frontend lowers QDQ MatMuls to int8 kernels
    kernel_family   the instruction set the int8 kernels are tensorized with (kernels/isa/),
                    or why there is none (the linears then stay fp32)
    prepare         on pair-form targets (AVX2, AVX-512BW) first ``widen_weights``: every int8
                    kernel's s8 weight parameter gets an ``astype`` to the instruction set's
                    ``weight_dtype`` (int16) and the kernel is rebuilt for it; then the shared
                    Relax passes (common.py), whose LiftTransformParams moves those casts
                    into ``main_transform_params``: run once at load, not per call
    schedule        [tune: MetaSchedule or tile search on the kernels with no record,
                    persistent database (tune.py)], then the records that passed the
                    reference check, then the CPU rule set (schedules/cpu.py)
    lower_passes    TVM's own CPU dataflow-lowering and finalization passes
    build           ``tvm.compile`` -> Relax VM executable

pipelines/cuda.py has the same names.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from lowbit.backends.tvm.kernels import INT8_KINDS, kernel_kind
from lowbit.backends.tvm.kernels.defs import weight_dtype, with_weight_dtype
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.lowering.fuse_siblings import FuseSiblingLinears
from lowbit.backends.tvm.lowering.legalize import LegalizeQuantLinear
from lowbit.backends.tvm.pipelines import common
from lowbit.backends.tvm.pipelines.common import prepare_passes
from lowbit.backends.tvm.schedules.base import apply_rules, prim_funcs, put_tuned
from lowbit.backends.tvm.schedules.cpu import default_rules
from lowbit.backends.tvm.tune import tune_module

__all__ = ["NAME", "ONNX_INT8", "build", "fx_passes", "kernel_family", "lower_passes",
           "prepare", "prepare_passes", "schedule", "widen_weights"]

log = logging.getLogger("lowbit.tvm")

NAME = "cpu"
ONNX_INT8 = True


def fx_passes(int8: bool, int4: bool) -> list:
    """FX passes from a quantized graph to the ``lowbit::`` kernel ops (lowering/)."""
    return [LegalizeQuantLinear(int8=int8, int4=int4, requant=True), FuseSiblingLinears()]


def kernel_family(target: tvm.target.Target) -> tuple[str | None, str]:
    """(the int8 kernel family, e.g. "u8s8/avx2 (AVX2: 4 x vpmaddwd ymm ...)", or None; why
    there is none)."""
    isa = isa_of(target)
    if isa is None:
        return None, (f"target {target.attrs.get('mcpu', 'generic')!r} has no instruction set "
                      f"for int8 kernels (x86-64 with AVX2 or later; lowbit/backends/tvm/"
                      f"kernels/isa)")
    return f"{isa.family} ({isa.title}: {isa.instruction})", ""


@expr_functor.mutator
class _CastWeights(PyExprMutator):
    """``call_tir(kernel, [x, w, ...])`` -> ``call_tir(kernel', [x, astype(w, dtype), ...])``
    for the kernels named in ``retyped`` (name -> the GlobalVar of the retyped kernel)."""

    def __init__(self, mod: tvm.IRModule, dtype: str):
        super().__init__(mod)
        self.dtype = dtype
        self.retyped: dict[str, relax.GlobalVar] = {}
        self.call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (call.op.same_as(self.call_tir) and call.args[0].name_hint in self.retyped):
            return call
        if not isinstance(call.args[1], relax.Tuple):
            raise TypeError(f"call_tir of {call.args[0].name_hint}: arguments are not a tuple")
        x, w, *rest = call.args[1].fields
        w = self.builder_.emit(relax.op.astype(w, self.dtype))
        return relax.call_tir(self.retyped[call.args[0].name_hint], relax.Tuple([x, w, *rest]),
                              call.ty_args[0])


def widen_weights(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Give every int8 kernel of ``mod`` the weight dtype of ``target``'s instruction set
    (``Isa.weight_dtype``): the kernel is rebuilt for it (kernels/defs.py
    ``with_weight_dtype``, same name) and each call casts its s8 weight argument. A weight
    that is a parameter is cast once at load (LiftTransformParams, in ``prepare``); ``mod`` as
    it is when the instruction set reads s8 weights (the VNNI families) or there is none."""
    isa = isa_of(target)
    if isa is None or isa.weight_dtype == "int8":
        return mod
    retyped = {gv.name_hint: func for gv, func in mod.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc) and kernel_kind(func) in INT8_KINDS
               and weight_dtype(func) != isa.weight_dtype}
    if not retyped:
        return mod
    # a new GlobalVar per kernel (one carries its function's signature), under the same name
    kept = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint not in retyped},
                        attrs=mod.attrs)
    mutator = _CastWeights(kept, isa.weight_dtype)
    for name, func in retyped.items():
        mutator.retyped[name] = mutator.builder_.add_func(
            with_weight_dtype(func, isa.weight_dtype), name)
    for gv, func in kept.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """``widen_weights`` on pair-form targets, then the shared passes (common.py)."""
    return common.prepare(widen_weights(mod, target), target)


def schedule(mod: tvm.IRModule, target: tvm.target.Target, tune=None, *, progress: bool = True
             ) -> tuple[tvm.IRModule, list[str]]:
    """Tune (``tune``: a ``Tune`` or None), put the tuned PrimFuncs in place (``mod`` is
    updated), then apply the CPU rules to every PrimFunc still unscheduled; returns the module
    and the names of the tuned kernels used."""
    tuned = tune_module(mod, target, tune, progress=progress) if tune is not None else None
    put_tuned(mod, tuned)
    mod = apply_rules(mod, target, default_rules())
    bare = [n for n, f in prim_funcs(mod).items() if "tirx.is_scheduled" not in f.attrs]
    if bare:
        log.warning("no schedule for %d kernel(s), they run as plain loops: %s", len(bare),
                    ", ".join(bare))
    return mod, sorted(tuned) if tuned else []


def lower_passes(target: tvm.target.Target) -> list:
    return cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)


def build(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """Compile a scheduled module."""
    with target:
        return tvm.compile(mod, target,
                           relax_pipeline=tvm.transform.Sequential(lower_passes(target)))
