"""The PEG group-wise int8 GEMM (per-embedding-group activations, Bondarenko et al., 2021).

The input's K channels form G contiguous groups of KG = K / G channels (after PEG's range
permutation is folded into the weights, a group is a contiguous run); each group has its own
u8 scale ``s_g`` and zero point ``z_g``, the weight is s8 per output channel::

    acc_i32[g, m, n] = sum_{c in group g} x_u8[m, c] * w_i8[n, c]     (w packed as W8A8)
    y_f32[m, n]      = sum_g f32(acc[g, m, n] - corr[g, n]) * scale[g, n] + bias[n]
    corr[g, n]       = z_g * sum_{c in g} w[n, c],    scale[g, n] = s_g * s_w[n]

which is ``linear(dequant_per_group(x_u8), dequant(w_i8), bias)`` with exact int32 zero-point
corrections, one accumulator per group. ``corr`` and ``scale`` are computed once for both
frontends in lowering/int8.py. CPU schedule: the W8A8 register tile (MI rows x NT*16 columns,
the instruction set's 16x4 block product) with the group loop outside the k loop of each group;
the epilogue sums the G partial results per tile.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx
from tvm.s_tir.dlight.base import get_extent

from lowbit.backends.tvm.kernels import cpu
from lowbit.backends.tvm.kernels.defs import (
    block_dot,
    param_shape,
    register_retype,
    weight_placeholder,
)
from lowbit.backends.tvm.kernels.isa import Isa
from lowbit.backends.tvm.kernels.registry import finish, register_reference

__all__ = ["linear_u8s8_peg", "reference_linear_u8s8_peg"]


def linear_u8s8_peg(m: int, n: int, k: int, groups: int, w_dtype: str = "int8"
                    ) -> tirx.PrimFunc:
    """The PEG W8A8 linear for x [m, k] in ``groups`` contiguous channel groups (the packed
    weight's s8 values held as ``w_dtype``: defs.py)."""
    if groups < 1 or k % groups or (k // groups) % 4:
        raise ValueError(f"linear_u8s8_peg needs K / groups to be a multiple of 4, got K={k}, "
                         f"groups={groups}")
    kg = k // groups
    n_pad = -(-n // 16) * 16
    x = te.placeholder((m, k), "uint8", name="x_u8")
    w = weight_placeholder(n_pad, k, w_dtype)
    corr = te.placeholder((groups, n), "int32", name="corr_i32")
    scale = te.placeholder((groups, n), "float32", name="scale_f32")
    bias = te.placeholder((n,), "float32", name="bias_f32")
    acc = te.compute((groups, m, n_pad),
                     lambda g, i, j: block_dot(x, w, i, j, g * (kg // 4), kg // 4),
                     name="acc_i32")

    rg = te.reduce_axis((0, groups), name="g")
    part = te.compute(
        (m, n),
        lambda i, j: te.sum((acc[rg, i, j] - corr[rg, j]).astype("float32") * scale[rg, j],
                            axis=rg),
        name="sum_f32")
    y = te.compute((m, n), lambda i, j: part[i, j] + bias[j], name="y_f32")
    return finish(te.create_prim_func([x, w, corr, scale, bias, y]), "linear_u8s8_peg",
                  **{"lowbit.groups": groups})


def _schedule(sch: s_tir.Schedule, isa: Isa) -> s_tir.Schedule:
    """Per parallel output tile: for each group, the MI x NT*16 int32 accumulator tile is
    computed in registers (``isa``'s block product over that group's k range) and folded into
    the fp32 partial sum right away, so only one group's accumulators are live at a time."""
    acc, part, out = (sch.get_sblock(b) for b in ("acc_i32", "sum_f32", "y_f32"))
    i, j, g = sch.get_loops(part)
    m, n = get_extent(sch, i), get_extent(sch, j)
    if n % 16:
        raise ValueError(f"linear_u8s8_peg's schedule needs N % 16 == 0, got N={n}")
    mi, nt = cpu.tile_sizes(isa, m, n)
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nt * 16])
    sch.reorder(jo, io, g, ii, ji)
    outer = sch.fuse(jo, io)
    sch.parallel(outer)
    sch.reverse_compute_at(out, outer, preserve_unit_loops=True)
    sch.compute_at(acc, g, preserve_unit_loops=True)
    main, wb, loops = cpu.factor_pairs(sch, acc, sch.get_loops(acc)[-1], isa)
    *_, ai, aj, akb = loops[:len(loops) - (2 if isa.pairs else 1)]
    sch.reorder(akb, ai, aj, *loops[-(2 if isa.pairs else 1):])
    if wb is not None:
        cpu.write_back(sch, wb)   # rfactor put it under g already
    cpu.tensorize_tile(sch, main, akb, ai, aj, isa)
    p_init = sch.decompose_reduction(part, g)
    # TVM refuses to vectorize a reduction update without its init: LLVM's loop vectorizer
    # gets the contiguous 16-column inner loop as it is
    for block in (p_init, out):
        lp = sch.get_loops(block)[-1]
        v = cpu.divisor(get_extent(sch, lp), (16, 8, 4, 2))
        if v > 1:
            sch.vectorize(sch.split(lp, [None, v])[1])
    return sch


def reference_linear_u8s8_peg(x_u8, w_i8, corr_i32, scale_f32, bias_f32):
    """numpy ``linear_u8s8_peg``: int64 accumulation per group, then the fp32 epilogue."""
    groups, n = corr_i32.shape
    a, b, c, d = w_i8.shape
    w = w_i8.transpose(0, 2, 1, 3).reshape(a * c, b * d)[:n].astype(np.int64)
    kg = w.shape[1] // groups
    y = np.zeros((x_u8.shape[0], n), np.float64)
    for g in range(groups):
        acc = x_u8[:, g * kg:(g + 1) * kg].astype(np.int64) @ w[:, g * kg:(g + 1) * kg].T
        y += (acc - corr_i32[g]).astype(np.float32) * scale_f32[g].astype(np.float64)
    return (y + bias_f32).astype(np.float32)


def _retype(func: tirx.PrimFunc, w_dtype: str) -> tirx.PrimFunc:
    (m, k), (groups, n) = param_shape(func, 0), param_shape(func, 2)    # x [M, K], corr [G, N]
    return linear_u8s8_peg(m, n, k, groups, w_dtype)


cpu.register("linear_u8s8_peg", _schedule)
register_retype("linear_u8s8_peg", _retype)
register_reference("linear_u8s8_peg", reference_linear_u8s8_peg)
