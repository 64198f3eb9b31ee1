"""The CUDA rule set: lowbit's integer kernels, then dlight's GPU rules for the float ones.

    LowbitKernel   the CUDA implementation the kernel registry holds (kernels/cuda.py: int8
                   tensor-core GEMM, int4 GEMV/GEMM with fused dequantization); a kernel it
                   fails on for a reason other than a shape it refuses is logged as a warning
    dlight         Matmul, GEMV, Reduction, GeneralReduction, Fallback

A GPU kernel no rule takes has no thread bindings and does not build: the CUDA pipeline
refuses it (pipelines/cuda.py).
"""

from __future__ import annotations

from tvm.s_tir import dlight as dl

from lowbit.backends.tvm.schedules.base import Guarded, LowbitKernel

__all__ = ["default_rules"]


def default_rules() -> list[dl.ScheduleRule]:
    return [Guarded(LowbitKernel(), loud=True)] + [
        Guarded(r) for r in (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                             dl.gpu.GeneralReduction(), dl.gpu.Fallback())]
