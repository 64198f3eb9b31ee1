"""CUDA stages of the build: GPU default schedules, and compiling to sm_XX machine code on a
machine without a GPU.

    schedule_cuda:  tuned records first (as on CPU), then lowbit's CUDA integer kernels
                    (cuda_kernels.py: int8 tensor-core GEMM, int4 GEMV/GEMM with fused
                    dequantization), then dlight's GPU rules (Matmul, GEMV, Reduction,
                    GeneralReduction, Fallback) for the float kernels
    build_cuda:     TVM's CUDA dataflow-lowering and finalization passes, device code compiled
                    by nvcc (``TVM_CUDA_COMPILE_MODE=nvcc``) to a cubin for the target's arch

Without a GPU, TVM's CUDA runtime library does not load (no libcuda.so.1) and TVM silently
embeds CUDA source instead of machine code; ``cuda_env.load_cuda_backend(allow_stub=True)``
loads it against a stub driver first, so the exported library holds an sm_90 cubin
(``fatbin_arches`` reads it back). Weights are parameters (never constants of the library).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import tvm
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.s_tir import dlight as dl

from lowbit.backends.tvm.cuda_env import load_cuda_backend

log = logging.getLogger("lowbit.tvm")

__all__ = ["build_cuda", "build_kernel", "cuda_rules", "fatbin_arches", "schedule_cuda"]


class _Guarded(dl.ScheduleRule):
    """A rule that fails on an unexpected PrimFunc declines it (the next rule tries)."""

    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as e:  # noqa: BLE001  (ScheduleError, TVMError, ...)
            from lowbit.backends.tvm.cuda_kernels import KERNEL_ATTR, CudaLowbitKernel

            # a lowbit integer kernel that falls to dlight is correct but several times slower:
            # say so (a shape the device functions cannot take raises ValueError by design)
            loud = (isinstance(self.rule, CudaLowbitKernel) and not isinstance(e, ValueError)
                    and isinstance(func, tvm.tirx.PrimFunc) and KERNEL_ATTR in func.attrs)
            (log.warning if loud else log.debug)("%s declined a PrimFunc: %s",
                                                 type(self.rule).__name__, e)
            return None


def cuda_rules() -> list:
    from lowbit.backends.tvm.cuda_kernels import CudaLowbitKernel

    rules = [CudaLowbitKernel(), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
             dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    return [_Guarded(r) for r in rules]


def schedule_cuda(mod: tvm.IRModule, target: tvm.target.Target, tuned=None) -> tvm.IRModule:
    """Like build.schedule, with the GPU rules."""
    for gv in list(mod.get_global_vars()) if tuned else []:
        if gv.name_hint in tuned:
            mod[gv] = tuned[gv.name_hint].with_attr("tirx.is_scheduled", True)
    with target:
        mod = dl.ApplyDefaultSchedule(*cuda_rules())(mod)
    bare = [gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and "tirx.is_scheduled" not in f.attrs]
    if bare:  # a GPU kernel without thread bindings does not build
        raise RuntimeError(f"no CUDA schedule for kernel(s): {', '.join(bare)}")
    return mod


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_cuda(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """Compile a scheduled module to a Relax VM executable with sm_XX machine code."""
    load_cuda_backend(allow_stub=True)
    passes = tvm.transform.Sequential(cuda_pipeline.dataflow_lower_passes(target)
                                      + cuda_pipeline.finalize_passes(target))
    from lowbit.backends.tvm.cuda_kernels import cuda_source_hook

    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), target:
        return tvm.compile(mod, target, relax_pipeline=passes)


def fatbin_arches(path: str | os.PathLike) -> list[str]:
    """The sm_XX architectures of the CUDA machine code embedded in an exported library
    (``[]``: none, e.g. CUDA source or PTX only). Reads the ELF images in the file: each cubin
    is an ELF whose ``e_flags`` carry the arch; cuobjdump is not needed."""
    data = open(path, "rb").read()
    arches = set()
    for m in re.finditer(rb"\x7fELF\x02\x01\x01", data):
        head = data[m.start():m.start() + 64]
        if len(head) < 64:
            continue
        e_machine = int.from_bytes(head[18:20], "little")
        if e_machine != 190:  # EM_CUDA
            continue
        flags = int.from_bytes(head[48:52], "little")
        # CUDA 12+ cubins: arch in bits 8..15 of e_flags; older ones: the low byte
        sm = (flags >> 8) & 0xFF if (flags >> 8) & 0xFF else flags & 0xFF
        arches.add(f"sm_{sm}")
    return sorted(arches)


def build_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.runtime.Module:
    """Compile one scheduled (or shell) PrimFunc alone, as ``main`` (kernel tests, benchmarks)."""
    load_cuda_backend(allow_stub=True)
    from lowbit.backends.tvm.cuda_kernels import cuda_source_hook

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), target:
        return tvm.compile(mod, target)
