"""The CPU (LLVM) implementations of the kernels of defs.py: hand-written schedules whose
u8 x s8 block products are tensorized with the target's instruction set (isa/).

``linear_u8s8`` / ``linear_u8s8_q``: register tile of MI rows x NT*16 columns (the instruction
set's preferences), the 16x4 inner block tensorized (``vpdpbusd`` or the exact ``vpmaddwd``
pair form), accumulator tile local, epilogue (and requantization) fused per tile, tiles
parallel (column blocks outer so consecutive tiles share weights). The packed weight should
have the instruction set's ``weight_dtype`` (int16 for the pair form: pre-widened,
isa/madd.py); ``for_target`` gives a kernel that dtype, as the CPU pipeline does for a whole
module (pipelines/cpu.py). The pair form also takes s8 weights (widened per block: slower).

``linear_w4a16``: a [K, NJ] strip of dequantized weights is decoded once per column strip
into a local buffer and reused by every row; for M <= SMALL_M (decode) the nibbles are
decoded inside the multiply-add instead, accumulators in registers.

``SCHEDULES`` maps a kind to its hand schedule ``schedule(sch, isa)``; ``register`` adds one
(peg.py) and files it in the kind x target registry under "llvm" (registry.py). The
tile search of pair-form instruction sets (tile_search.py) calls the same schedules with a
forced register tile.
"""

from __future__ import annotations

import functools

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from lowbit.backends.tvm.kernels import registry
from lowbit.backends.tvm.kernels.defs import weight_dtype, with_weight_dtype
from lowbit.backends.tvm.kernels.isa import Isa, isa_of

__all__ = ["INT8_KINDS", "SCHEDULES", "divisor", "factor_pairs", "for_target", "register",
           "schedule_strip_gemm", "tensorize_tile", "tile_sizes", "write_back"]


def divisor(extent: int, prefs) -> int:
    """The first of ``prefs`` dividing ``extent`` (1 if none)."""
    return next((p for p in prefs if extent % p == 0), 1)


def factor_pairs(sch: s_tir.Schedule, acc, q, isa: Isa):
    """For a pair-form ``isa``: split ``acc``'s 4-lane loop ``q`` (``block_dot``) into (h, t)
    and factor the sum over h out (``rfactor``), so the product block keeps two partial
    sums per output (``acc_i32_rf``, last axis 2) and ``acc`` becomes their write-back.
    Returns (product block, write-back block or None, the product's loops: rfactor makes
    new ones)."""
    if not isa.pairs:
        return acc, None, sch.get_loops(acc)
    h, _ = sch.split(q, [2, 2])
    rf = sch.rfactor(h, factor_axis=len(sch.get(acc).writes[0].source.shape))
    return rf, acc, sch.get_loops(rf)


def tensorize_tile(sch: s_tir.Schedule, main, kb, rows, cols, isa: Isa) -> None:
    """Tensorize the register tile of the product block ``main`` (``factor_pairs``), whose
    loops end with ``kb, rows (MI), cols (NT*16), block lanes``: the 16x4 block product
    becomes ``isa``'s intrinsic, NT column blocks and MI rows are unrolled, the accumulator
    tile is initialised before ``kb``."""
    intrin = isa.register(weight_dtype(sch.mod["main"]))
    jt, ji = sch.split(cols, [None, 16])
    init = sch.decompose_reduction(main, kb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, intrin)
    sch.unroll(jt)
    sch.unroll(rows)


def tile_sizes(isa: Isa, m: int, n_pad: int) -> tuple[int, int]:
    """(MI, NT) of the default register tile: ``isa``'s first preferences dividing M, N/16."""
    return divisor(m, isa.mi_prefs), divisor(n_pad // 16, isa.nt_prefs)


def write_back(sch: s_tir.Schedule, wb, at=None) -> None:
    """Schedule a pair-form write-back block (``factor_pairs``), moved under loop ``at``
    first if given: per row, the two halves added over contiguous columns (LLVM vectorizes
    the column loop)."""
    if at is not None:
        sch.reverse_compute_at(wb, at, preserve_unit_loops=True)
    h, wi, wj = sch.get_loops(wb)[-3:]
    sch.reorder(wi, h, wj)
    init = sch.decompose_reduction(wb, wi)
    lp = sch.get_loops(init)[-1]
    v = divisor(get_extent(sch, lp), (16, 8, 4, 2))
    if v > 1:
        sch.vectorize(sch.split(lp, [None, v])[1])
    sch.unroll(h)


def _schedule_u8s8(sch: s_tir.Schedule, isa: Isa) -> s_tir.Schedule:
    """Also schedules ``linear_u8s8_q``: its epilogue stages are inlined into the last one.
    Register tile MI x NT*16 (``isa``'s preferences), tiles parallel (column blocks outer so
    consecutive tiles share weights), the epilogue per tile."""
    acc = sch.get_sblock("acc_i32")
    *epilogue, out = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
                      if not sch.get(b).same_as(sch.get(acc))]
    for b in epilogue:
        sch.compute_inline(b)
    main, wb, (i, j, kb, *lanes) = factor_pairs(sch, acc, sch.get_loops(acc)[-1], isa)
    mi, nt = tile_sizes(isa, get_extent(sch, i), get_extent(sch, j))
    io, ii = sch.split(i, [None, mi])
    jo, jt = sch.split(j, [None, nt * 16])
    sch.reorder(jo, io, kb, ii, jt, *lanes)
    outer = sch.fuse(jo, io)
    sch.parallel(outer)
    if wb is not None:
        write_back(sch, wb, outer)
    sch.reverse_compute_at(out, outer, preserve_unit_loops=True)
    tensorize_tile(sch, main, kb, ii, jt, isa)
    oj = sch.get_loops(out)[-1]
    vec = divisor(get_extent(sch, oj), (16, 8, 4, 2))
    if vec > 1:
        _, ojv = sch.split(oj, [None, vec])
        sch.vectorize(ojv)
    return sch


def _schedule_w4a16_gemv(sch: s_tir.Schedule) -> s_tir.Schedule:
    """Decode (M <= SMALL_M, the two-level form): per parallel strip of NJ columns and per
    group, the M x NJ accumulators stay in registers while the group's packed bytes stream
    through once (nibble decode inlined into the multiply-add); the scale is applied once per
    group. Measured 8192 x 8192, 2 threads, under load: 5.1 -> 10.0 GB/s effective."""
    acc, part, out = (sch.get_sblock(b) for b in ("acc_f32", "sum_f32", "y_f32"))
    i, j, g = sch.get_loops(part)
    n, group = get_extent(sch, j), get_extent(sch, sch.get_loops(acc)[-1])
    nj = divisor(n, (128, 64, 32, 16))
    nj = nj if nj >= 16 else n                      # odd widths: one strip, shorter vectors
    lanes = divisor(nj, (16, 8, 4, 2, 1))
    jo, ji = sch.split(j, [None, nj])
    sch.reorder(jo, g, i, ji)
    sch.parallel(jo)
    sch.reverse_compute_at(out, jo, preserve_unit_loops=True)
    sch.compute_at(acc, g, preserve_unit_loops=True)
    ai, aj, ar = sch.get_loops(acc)[-3:]
    aro, ari = sch.split(ar, [None, divisor(group, (8, 4, 2, 1))])
    ajt, ajv = sch.split(aj, [None, lanes])
    sch.reorder(aro, ari, ai, ajt, ajv)
    sch.vectorize(ajv)
    for loop in (ajt, ari, ai):
        sch.unroll(loop)
    a_init = sch.decompose_reduction(acc, aro)
    sch.vectorize(sch.get_loops(a_init)[-1])
    _, pv = sch.split(sch.get_loops(part)[-1], [None, lanes])
    sch.vectorize(pv)
    p_init = sch.decompose_reduction(part, g)
    sch.vectorize(sch.get_loops(p_init)[-1])
    sch.vectorize(sch.get_loops(out)[-1])
    return sch


def _schedule_w4a16(sch: s_tir.Schedule) -> s_tir.Schedule:
    """Per column strip (parallel): decode the [K, NJ] strip of weights once, then run an
    MI x NJ register-tiled fp32 GEMM over it for every row tile (M <= SMALL_M: the GEMV
    schedule above)."""
    if any(b.name_hint == "acc_f32" for b in map(sch.get, sch.get_child_blocks(
            sch.get_sblock("root")))):
        return _schedule_w4a16_gemv(sch)
    return schedule_strip_gemm(sch)


def schedule_strip_gemm(sch: s_tir.Schedule) -> s_tir.Schedule:
    """A GEMM whose weight is decoded by block ``w_f32`` into fp32 (W4A16, BCQ): per parallel
    strip of NJ columns the [K, NJ] strip is decoded once (vectorized over columns), then an
    MI x NJ register tile (block ``mm_f32``) runs for every row tile, k unrolled by KU; the
    output block ``y_f32`` follows per strip."""
    wdq, mm, out = (sch.get_sblock(b) for b in ("w_f32", "mm_f32", "y_f32"))
    i, j, r = sch.get_loops(mm)
    m, n, k = (get_extent(sch, lp) for lp in (i, j, r))
    mi = divisor(m, (6, 4, 3, 2, 1))
    nj = divisor(n, (32, 16, 8, 4, 2, 1))
    ku = divisor(k, (4, 2, 1))
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nj])
    ro, ri = sch.split(r, [None, ku])
    sch.reorder(jo, io, ro, ri, ii, ji)
    sch.parallel(jo)
    acc = sch.cache_write(mm, 0, "local")
    sch.reverse_compute_at(acc, io, preserve_unit_loops=True)
    sch.unroll(ii)
    sch.unroll(ri)
    if nj > 1:
        sch.vectorize(ji)
    sch.compute_at(wdq, jo, preserve_unit_loops=True)         # decode once per strip
    sch.vectorize(sch.get_loops(wdq)[-1])
    sch.reverse_compute_at(out, jo, preserve_unit_loops=True)
    init = sch.decompose_reduction(mm, ro)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.vectorize(sch.get_loops(out)[-1])
    return sch


SCHEDULES: dict = {}      # kind -> schedule(sch, isa): the CPU hand schedules
INT8_KINDS: set[str] = set()   # kinds that need an Isa (u8 x s8 products)


def for_target(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """``func`` as ``target``'s pipeline hands it to the schedules: an int8 kernel's packed
    weight in the dtype of the target's instruction set (int16 on pair-form targets); any
    other kernel, or a target without an instruction set, unchanged."""
    isa = isa_of(target)
    if isa is None or registry.kernel_kind(func) not in INT8_KINDS:
        return func
    return with_weight_dtype(func, isa.weight_dtype)


def _on_cpu(kind: str, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
    """The registry implementation of ``kind`` on LLVM targets: its hand schedule with the
    target's instruction set; None (declined) for int8 kinds on a CPU without one. The block
    intrinsic is the one over the kernel's weight dtype (``Isa.register``: a dot-form set
    refuses int16 weights with a ValueError)."""
    isa = isa_of(target)
    if kind in INT8_KINDS and isa is None:
        return None
    return SCHEDULES[kind](s_tir.Schedule(func), isa)


def register(kind: str, schedule, *, int8: bool = True) -> None:
    """Add the CPU hand schedule ``schedule(sch, isa)`` of kernel ``kind`` and whether it is a
    u8 x s8 kernel (scheduled only on targets with an ``isa`` entry)."""
    SCHEDULES[kind] = schedule
    if int8:
        INT8_KINDS.add(kind)
    registry.register(kind, "llvm", functools.partial(_on_cpu, kind))


register("linear_u8s8", _schedule_u8s8)
register("linear_u8s8_q", _schedule_u8s8)
register("linear_w4a16", lambda sch, _isa: _schedule_w4a16(sch), int8=False)
