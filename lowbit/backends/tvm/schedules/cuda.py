"""The CUDA rule set: lowbit's integer kernels, then dlight's GPU rules for the float ones.

    LowbitKernel   the CUDA implementation the kernel registry holds (kernels/cuda.py: int8
                   tensor-core GEMM, int4 GEMV/GEMM with fused dequantization); a kernel it
                   fails on for a reason other than a shape it refuses is logged as a warning
    dlight         Matmul, GEMV, Reduction, GeneralReduction
    WarpRowReduction  a lone reduction over the trailing axes that dlight's rules decline
                   (Reduction takes sums only, GeneralReduction wants an injective epilogue):
                   the row test any(score != -inf) of the SDPA decomposition, an int8 max
                   over the keys; a warp (or block) per row, cross-thread reduction
    dlight         Fallback (one thread per output element: elementwise kernels)

A GPU kernel no rule takes has no thread bindings and does not build: the CUDA pipeline
refuses it (pipelines/cuda.py).
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial

from lowbit.backends.tvm.schedules.base import Guarded, LowbitKernel, TargetRule

__all__ = ["WarpRowReduction", "default_rules"]


class WarpRowReduction(TargetRule):
    """One reduction block (after inlining its elementwise producers) whose iterators are
    spatial then reduction (``S..SR..R``): the spatial loops fused are the rows, each row a
    group of ``tx`` threads (``threadIdx.x``, a warp up to ``WIDE`` elements) that reads it
    coalesced and reduces across threads (TVM's cross-thread reduction: warp shuffles or shared
    memory), ``ROW_THREADS // tx`` rows per block (``threadIdx.y``). Any reducer TVM's
    cross-thread lowering knows (max, min, sum, ...); anything else declines."""

    KINDS = ("cuda",)
    ROW_THREADS = 256
    WIDE = 1024

    def schedule(self, func: tirx.PrimFunc, target, tunable):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        infos = try_inline_contiguous_spatial(sch, infos) if infos is not None else None
        if infos is None or len(infos) != 1 or not infos[0].is_reduction():
            return None
        kinds = infos[0].dom_kind()
        n_s = len(kinds) - len(kinds.lstrip("S"))
        if n_s == 0 or kinds[n_s:] != "R" * (len(kinds) - n_s):
            return None
        block = infos[0].block_rv
        loops = sch.get_loops(block)
        if len(loops) != len(kinds) or not _rows_contiguous(sch.get(block)):
            return None
        row = sch.fuse(*loops[:n_s])
        red = sch.fuse(*loops[n_s:])
        extent = sch.get(red).extent
        tx = 32 if isinstance(extent, tirx.IntImm) and extent.value <= self.WIDE else 256
        ty = max(1, self.ROW_THREADS // tx)
        r_out, r_in = sch.split(red, [None, tx])
        bx, by = sch.split(row, [None, ty])
        sch.reorder(bx, by, r_in, r_out)
        sch.bind(bx, "blockIdx.x")
        sch.bind(by, "threadIdx.y")
        sch.bind(r_in, "threadIdx.x")
        return sch


def _rows_contiguous(block: tirx.SBlock) -> bool:
    """Every buffer the block reads (but the one it writes) has a reduction iterator in its
    last index: threads along the reduction read consecutive elements."""
    red = {iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    written = {w.source for w in block.writes}
    for r in block.reads:
        if r.source in written:
            continue
        used = []
        tvm_ffi.structural_walk(r.region[-1].min, [(tirx.Var, used.append)], order="post")
        if not any(v in red for v in used):
            return False
    return True


def default_rules() -> list[dl.ScheduleRule]:
    return [Guarded(LowbitKernel(), loud=True)] + [
        Guarded(r) for r in (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                             dl.gpu.GeneralReduction(), WarpRowReduction(), dl.gpu.Fallback())]
