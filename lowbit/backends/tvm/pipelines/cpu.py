"""The CPU (LLVM) pipeline: the stages of ``lowbit.compile`` for x86 targets, in order.

    fx_passes       LegalizeQuantLinear with requantizing epilogues, FuseSiblingLinears
    ONNX_INT8       the ONNX frontend lowers QDQ MatMuls to int8 kernels
    kernel_family   the instruction set the int8 kernels are tensorized with (kernels/isa/),
                    or why there is none (the linears then stay fp32)
    prepare         the shared Relax passes (common.py)
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
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.lowering.fuse_siblings import FuseSiblingLinears
from lowbit.backends.tvm.lowering.legalize import LegalizeQuantLinear
from lowbit.backends.tvm.pipelines.common import prepare, prepare_passes
from lowbit.backends.tvm.schedules.base import apply_rules, prim_funcs, put_tuned
from lowbit.backends.tvm.schedules.cpu import default_rules
from lowbit.backends.tvm.tune import tune_module

__all__ = ["NAME", "ONNX_INT8", "build", "fx_passes", "kernel_family", "lower_passes",
           "prepare", "prepare_passes", "schedule"]

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
