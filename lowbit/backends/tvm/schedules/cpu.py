"""The CPU rule set: what an untuned LLVM build runs.

TVM 0.27 applies no schedule on CPU by default (every kernel is a scalar loop nest, 100-200x
slower than torch) and dlight's CPU rules cover only GEMV and softmax/norm-like reductions.
These rules fill the gap, tried in order on every PrimFunc that no one scheduled yet:

1. ``LowbitKernel`` (base.py): our integer kernels take the CPU implementation the kernel
   registry holds for them (kernels/cpu.py: int8 GEMMs tensorized with the CPU's instruction
   set, int4 dequant-in-GEMM).
2. ``Matmul``: fp32 ``C[b, i, j] = sum_k A * B`` with injective prologue/epilogue; register
   tile ``MI x NJ`` (NJ a multiple of the vector width), k unrolled, accumulator kept in a
   compacted local tile, batch/row/column tiles parallel.
3. ``RowReduction``: softmax / layer norm / RMS norm-like functions (reductions over the last
   axis of rows): injective blocks inlined unless a reduction reads them, each reduction
   split into 16 lanes with ``rfactor`` so it runs as vector adds (a serial fp32 sum is one
   4-cycle add chain per row: LayerNorm 128x384 0.10 ms -> 0.018 ms, masked softmax
   12x128x128 0.29 ms -> 0.10 ms), every block computed per row under one parallel loop.
   Then dlight ``cpu.GEMV`` and ``cpu.Reduction`` for what it declines.
4. ``Injective``: everything else: inline what can be inlined, then per block fuse the spatial
   loops, parallelize the outer part and vectorize the inner part; reductions keep their
   reduction loops serial and innermost.

Each rule is a ``TargetRule`` for LLVM targets (base.py): on any other target it declines.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, get_extent, try_inline
from tvm.target import Target

from lowbit.backends.tvm.schedules.base import Guarded, LowbitKernel, TargetRule, apply_rules

__all__ = ["Injective", "Matmul", "RowReduction", "default_rules", "default_schedule_of"]

VEC_F32 = 16          # AVX-512 lanes for fp32
PARALLEL_MIN = 64     # don't parallelize loops doing less work than this many vectors


def _divisor(extent, prefs) -> int:
    if not isinstance(extent, int):
        return 1
    return next((p for p in prefs if extent % p == 0), 1)


class Matmul(TargetRule):
    """fp32 (batch) matmul with optional injective epilogue, on CPU (see module docstring)."""

    KINDS = ("llvm",)
    MI = (8, 6, 4, 3, 2, 1)
    NJ = (32, 16, 8, 4, 2, 1)
    KU = (4, 2, 1)

    def schedule(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [b for b in infos if not b.is_injective()]
        if len(reductions) != 1:
            return None
        main = reductions[0]
        kinds = main.dom_kind()
        n_s = len(kinds) - len(kinds.lstrip("S"))
        if n_s < 2 or set(kinds[n_s:]) != {"R"}:
            return None
        block = sch.get(main.block_rv)
        if len(block.reads) < 2 or block.writes[0].source.dtype != "float32":
            return None
        others = [b for b in infos if b is not main]
        rest = try_inline(sch, others)
        if len(rest) > 1:
            return None
        main_rv = main.block_rv
        if rest:
            epilogue = rest[0].block_rv
            if sch.get_consumers(main_rv) and not any(
                    sch.get(c).same_as(sch.get(epilogue)) for c in sch.get_consumers(main_rv)):
                return None
        else:
            epilogue = sch.cache_write(main_rv, 0, "global")
        loops = sch.get_loops(main_rv)
        *batch, i, j = loops[:n_s]
        ks = loops[n_s:]
        k = sch.fuse(*ks) if len(ks) > 1 else ks[0]
        mi = _divisor(get_extent(sch, i), self.MI)
        nj = _divisor(get_extent(sch, j), self.NJ)
        ku = _divisor(get_extent(sch, k), self.KU)
        io, ii = sch.split(i, [None, mi])
        jo, ji = sch.split(j, [None, nj])
        ko, ki = sch.split(k, [None, ku])
        sch.reorder(*batch, io, jo, ko, ki, ii, ji)
        outer = sch.fuse(*batch, io, jo)
        sch.parallel(outer)
        if nj > 1:
            sch.vectorize(ji)
        sch.unroll(ii)
        sch.unroll(ki)
        init = sch.decompose_reduction(main_rv, ko)
        init_loops = sch.get_loops(init)
        if nj > 1:
            sch.vectorize(init_loops[-1])
        sch.reverse_compute_at(epilogue, outer, preserve_unit_loops=True)
        _vectorize_tail(sch, epilogue, skip=1)
        return sch


def _vectorize_tail(sch: s_tir.Schedule, block, skip: int) -> None:
    """Vectorize (up to VEC_F32 lanes) the innermost spatial loop under the first ``skip``."""
    loops = sch.get_loops(block)[skip:]
    if not loops:
        return
    inner = loops[-1]
    ext = get_extent(sch, inner)
    lanes = _divisor(ext, (VEC_F32, 8, 4, 2))
    if lanes <= 1:
        return
    if ext != lanes:
        _, inner = sch.split(inner, [None, lanes])
    try:
        sch.vectorize(inner)
    except Exception:  # noqa: BLE001, S110  (a block TVM cannot vectorize stays scalar)
        pass


class RowReduction(TargetRule):
    """Row-wise reductions over the last axis with vectorized (rfactored) reductions."""

    KINDS = ("llvm",)

    def schedule(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or not infos[-1].is_injective():
            return None
        if all(b.is_injective() for b in infos):
            return None
        lead = min(len(k) - len(k.lstrip("S")) for k in (b.dom_kind() for b in infos))
        if lead == 0:
            return None
        # inline injective blocks no reduction reads (softmax's exp stays: computed once)
        for b in infos[:-1]:
            if b.is_injective() and not any(_is_reduction(sch, c)
                                            for c in sch.get_consumers(b.block_rv)):
                try:
                    sch.compute_inline(b.block_rv)
                except Exception:  # noqa: BLE001, S110  (stays a block of its own)
                    pass
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        # rfactor before compute_at (rfactor needs the block to own its loop nest)
        for b in infos:
            kinds = b.dom_kind()
            if b.is_injective() or kinds.count("R") != 1 or kinds[-1] != "R":
                continue
            inner = sch.get_loops(b.block_rv)[-1]
            ext = get_extent(sch, inner)
            if isinstance(ext, int) and ext % VEC_F32 == 0 and ext >= 2 * VEC_F32:
                _, lanes = sch.split(inner, [None, VEC_F32])
                sch.rfactor(lanes, factor_axis=0)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        loops = sch.get_loops(blocks[-1])
        row = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
        sch.parallel(row)
        _vectorize_tail(sch, blocks[-1], skip=1)
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, row, preserve_unit_loops=True)
        for b in blocks[:-1]:
            if not _is_reduction(sch, b):
                _vectorize_tail(sch, b, skip=1)
            elif sch.get(b).name_hint.endswith("_rf"):
                # compute_at put the lane loop first: move it innermost, under the reduction
                lane, *rest = sch.get_loops(b)[1:]
                if get_extent(sch, lane) == VEC_F32 and rest:
                    sch.reorder(*rest, lane)
                    sch.vectorize(lane)
        return sch


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


class Injective(TargetRule):
    """Fallback: parallel + vectorized spatial loops; reductions serial inside."""

    KINDS = ("llvm",)

    def schedule(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos) if len(infos) > 1 else infos
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            kinds = info.dom_kind()
            if not loops or len(kinds) != len(loops):
                continue
            s_loops = [lp for lp, kd in zip(loops, kinds) if kd == "S"]
            r_loops = [lp for lp, kd in zip(loops, kinds) if kd != "S"]
            if not s_loops:
                continue
            if r_loops:
                sch.reorder(*s_loops, *r_loops)
            fused = sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0]
            ext = get_extent(sch, fused)
            if r_loops:
                if isinstance(ext, int) and ext > 1:
                    sch.parallel(fused)
                continue
            lanes = _divisor(ext, (VEC_F32, 8, 4, 2))
            if lanes > 1:
                outer, inner = sch.split(fused, [None, lanes])
                try:
                    sch.vectorize(inner)
                except Exception:  # noqa: BLE001, S110  (stays scalar)
                    pass
            else:
                outer = fused
            if isinstance(ext, int) and ext >= PARALLEL_MIN * max(lanes, 1):
                sch.parallel(outer)
        return sch


def default_rules() -> list[ScheduleRule]:
    rules = [LowbitKernel(), Matmul(), RowReduction(), dl.cpu.GEMV(), dl.cpu.Reduction(),
             Injective()]
    return [Guarded(r) for r in rules]


def default_schedule_of(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc | None:
    """``func`` scheduled by the default rules alone (None: no rule takes it)."""
    from tvm import IRModule

    out = apply_rules(IRModule({"main": func}), target, default_rules())["main"]
    return out if "tirx.is_scheduled" in out.attrs else None
