"""Integer TIR kernels and their hand-written default schedules.

``linear_u8s8`` (W8A8, static u8 activations, s8 per-channel weights)::

    acc_i32[m, n] = sum_k x_u8[m, k] * w_i8[n, k]                 (w packed [N/16, K/4, 16, 4])
    y_f32[m, n]   = f32(acc_i32[m, n] - corr_i32[n]) * scale_f32[n] + bias_f32[n]
    corr_i32[n]   = x_zp * sum_k w_i8[n, k],   scale_f32[n] = x_scale * w_scale[n]

which is ``linear(dequant(x_u8), dequant(w_i8), bias)`` with the zero-point correction done in
exact integer arithmetic. N is padded to a multiple of 16 in the packed weight; K must be a
multiple of 4. Default schedule: register tile of MI rows x NT*16 columns (8 x 48), the 16x4
inner block tensorized with ``vpdpbusd`` (intrin.py), accumulator tile local, epilogue fused
per tile, tiles parallel (column blocks outer so consecutive tiles share weights).

``linear_w4a16`` (int4 group-wise weights, float activations)::

    w_f32[k, n] = (nibble(w_u8[k // 2, n], k % 2) - 8) * scale_f32[k // g, n]
    y_f32[m, n] = sum_k x_f32[m, k] * w_f32[k, n] + bias_f32[n]

with the int4 weight packed two per byte along K and transposed (pack.py), so decoding a row of
N weights reads contiguous bytes. Default schedule: a [K, NJ] strip of dequantized weights is
decoded once per column strip into a local buffer and reused by every row; for M <= SMALL_M
(decode) the nibbles are decoded inside the multiply-add instead, accumulators in registers.

``linear_u8s8_q`` (the same GEMM with a requantizing epilogue: the int8 output of one kernel
is the u8 input of the next)::

    y_u8[m, n] = clip(round(act(y_f32[m, n]) * oq[0]) + oq[1], qmin, qmax)

where ``oq = [1 / out_scale, out_zero_point]`` (fp32, as ``quantized_decomposed`` computes it)
and ``act`` is none, gelu (erf form, TVM's fast_erf polynomial), gelu_tanh or relu. Same
schedule: the epilogue is inlined into the per-tile output block.

Every kernel carries ``lowbit.kernel`` (the schedule rule key) and ``op_pattern = kOpaque`` so
Relax FuseOps leaves it whole.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx
from tvm.target import Target

from lowbit.backends.tvm.isa import Isa, isa_of
from lowbit.backends.tvm.schedules import KERNEL_ATTR, get_extent

__all__ = ["ACTIVATIONS", "OPAQUE", "default_schedule", "linear_u8s8", "linear_u8s8_q",
           "linear_w4a16"]

OPAQUE = 8  # relax OpPatternKind.kOpaque
SMALL_M = 4  # W4A16 with at most this many rows runs the GEMV schedule


ACTIVATIONS = ("none", "gelu", "gelu_tanh", "relu")


def finish(func: tirx.PrimFunc, kind: str, **attrs) -> tirx.PrimFunc:
    """Mark a kernel: its schedule-rule key, opaque to FuseOps, no aliasing, extra attrs."""
    return func.with_attrs({KERNEL_ATTR: kind, "op_pattern": OPAQUE, "tirx.noalias": True,
                            **attrs})


def block_dot(x: te.Tensor, w: te.Tensor, i, j, kb0, blocks: int):
    """``sum_{kb < blocks, q < 4} x_u8[i, 4 (kb0 + kb) + q] * w_i8[j // 16, kb0 + kb, j % 16, q]``
    in int32: the reduction of every u8 x s8 kernel, over the packed weight's 4-deep blocks
    ``kb`` and their lanes ``q`` (the block product an instruction set tensorizes)."""
    kb = te.reduce_axis((0, blocks), name="kb")
    q = te.reduce_axis((0, 4), name="kq")
    return te.sum(x[i, (kb0 + kb) * 4 + q].astype("int32")
                  * w[j // 16, kb0 + kb, j % 16, q].astype("int32"), axis=[kb, q])


def _u8s8_gemm(m: int, n: int, k: int):
    """Placeholders and the fp32 output stage shared by the two W8A8 kernels."""
    if k % 4:
        raise ValueError(f"linear_u8s8 needs K % 4 == 0, got K={k}")
    n_pad = -(-n // 16) * 16
    x = te.placeholder((m, k), "uint8", name="x_u8")
    w = te.placeholder((n_pad // 16, k // 4, 16, 4), "int8", name="w_i8")
    corr = te.placeholder((n,), "int32", name="corr_i32")
    scale = te.placeholder((n,), "float32", name="scale_f32")
    bias = te.placeholder((n,), "float32", name="bias_f32")
    acc = te.compute((m, n_pad), lambda i, j: block_dot(x, w, i, j, 0, k // 4),
                     name="acc_i32")
    y = te.compute(
        (m, n),
        lambda i, j: (acc[i, j] - corr[j]).astype("float32") * scale[j] + bias[j],
        name="y_f32")
    return [x, w, corr, scale, bias], y


def linear_u8s8(m: int, n: int, k: int) -> tirx.PrimFunc:
    """The W8A8 linear for x [m, k] and a weight [n, k] (see module docstring)."""
    inputs, y = _u8s8_gemm(m, n, k)
    return finish(te.create_prim_func([*inputs, y]), "linear_u8s8")


def _activation(y: te.Tensor, act: str) -> te.Tensor:
    from tvm import topi

    if act == "none":
        return y
    if act == "relu":
        return te.compute(y.shape, lambda i, j: te.max(y[i, j], tirx.const(0.0, "float32")),
                          name="act")
    if act == "gelu":
        erf = topi.fast_erf(te.compute(y.shape, lambda i, j: y[i, j] * 0.7071067811865476,
                                       name="act_in"))
        return te.compute(y.shape, lambda i, j: y[i, j] * (0.5 + 0.5 * erf[i, j]), name="act")
    if act == "gelu_tanh":
        inner = te.compute(y.shape, lambda i, j: 0.7978845608028654 * (
            y[i, j] + 0.044715 * y[i, j] * y[i, j] * y[i, j]), name="act_in")
        th = topi.fast_tanh(inner)
        return te.compute(y.shape, lambda i, j: y[i, j] * (0.5 + 0.5 * th[i, j]), name="act")
    raise ValueError(f"unknown activation {act!r}: one of {ACTIVATIONS}")


def linear_u8s8_q(m: int, n: int, k: int, act: str = "none", qmin: int = 0,
                  qmax: int = 255) -> tirx.PrimFunc:
    """The W8A8 linear with a fused activation and requantization to u8 (module docstring)."""
    if not 0 <= qmin <= qmax <= 255:
        raise ValueError(f"linear_u8s8_q needs a u8 grid, got [{qmin}, {qmax}]")
    inputs, y = _u8s8_gemm(m, n, k)
    z = _activation(y, act)
    oq = te.placeholder((2,), "float32", name="oq_f32")
    lo, hi = tirx.const(float(qmin), "float32"), tirx.const(float(qmax), "float32")
    out = te.compute(
        (m, n),
        lambda i, j: te.min(te.max(tirx.round(z[i, j] * oq[0]) + oq[1], lo), hi).astype("uint8"),
        name="y_u8")
    return finish(te.create_prim_func([*inputs, oq, out]), "linear_u8s8_q",
                   **{"lowbit.act": act, "lowbit.qmin": qmin, "lowbit.qmax": qmax})


def linear_w4a16(m: int, n: int, k: int, group: int) -> tirx.PrimFunc:
    """The W4A16 linear for x [m, k] and an int4 weight [n, k] in groups of ``group``; for
    m <= SMALL_M (decode) the two-level GEMV form below."""
    if k % group or group % 2:
        raise ValueError(f"linear_w4a16 needs an even group dividing K, got K={k}, g={group}")
    x = te.placeholder((m, k), "float32", name="x_f32")
    w = te.placeholder((k // 2, n), "uint8", name="w_u4x2")
    scale = te.placeholder((k // group, n), "float32", name="scale_f32")
    bias = te.placeholder((n,), "float32", name="bias_f32")
    if m <= SMALL_M:
        return _w4a16_gemv(x, w, scale, bias, m, n, k, group)
    wdq = te.compute(
        (k, n),
        lambda kk, j: (_nibble(w, kk, j) - 8.0) * scale[kk // group, j],
        name="w_f32")
    r = te.reduce_axis((0, k), name="k")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, r] * wdq[r, j], axis=r), name="mm_f32")
    y = te.compute((m, n), lambda i, j: mm[i, j] + bias[j], name="y_f32")
    return finish(te.create_prim_func([x, w, scale, bias, y]), "linear_w4a16")


def _nibble(w: te.Tensor, kk, j):
    """The unsigned 4-bit code of weight row ``kk`` (two per byte along K), as fp32."""
    return ((w[kk // 2, j] >> ((kk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
            ).astype("float32")


def _w4a16_gemv(x, w, scale, bias, m, n, k, group) -> tirx.PrimFunc:
    """Decode-shaped W4A16, the scale and the -8 offset taken out of the inner loop::

        acc[g, i, j] = sum_{kk in group g} x[i, kk] * code[kk, j]         (code in 0..15)
        y[i, j]      = sum_g scale[g, j] * (acc[g, i, j] - 8 * sum_{kk in g} x[i, kk]) + b[j]

    which is the same sum as the definition above, regrouped (fp32 reassociation only)."""
    ng = k // group
    r = te.reduce_axis((0, group), name="kk")
    acc = te.compute(
        (ng, m, n),
        lambda g, i, j: te.sum(x[i, g * group + r] * _nibble(w, g * group + r, j), axis=r),
        name="acc_f32")
    r2 = te.reduce_axis((0, group), name="kx")
    xs = te.compute((ng, m), lambda g, i: te.sum(x[i, g * group + r2], axis=r2), name="xs_f32")
    rg = te.reduce_axis((0, ng), name="g")
    part = te.compute(
        (m, n),
        lambda i, j: te.sum(scale[rg, j] * (acc[rg, i, j] - 8.0 * xs[rg, i]), axis=rg),
        name="sum_f32")
    y = te.compute((m, n), lambda i, j: part[i, j] + bias[j], name="y_f32")
    return finish(te.create_prim_func([x, w, scale, bias, y]), "linear_w4a16")


# ---- default schedules ------------------------------------------------------------------------
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
    intrin = isa.register()
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


SCHEDULES = {"linear_u8s8": _schedule_u8s8, "linear_u8s8_q": _schedule_u8s8,
              "linear_w4a16": lambda sch, _isa: _schedule_w4a16(sch)}
INT8_KINDS = {"linear_u8s8", "linear_u8s8_q"}   # kinds that need an Isa (u8 x s8 products)


def register(kind: str, schedule, reference, *, int8: bool = True) -> None:
    """Add a kernel kind defined in another module (peg_kernel.py): its default schedule
    ``schedule(sch, isa)``, its numpy reference (check.py), and whether it is a u8 x s8
    kernel (scheduled only on targets with an ``isa`` entry)."""
    SCHEDULES[kind] = schedule
    REFERENCES[kind] = reference
    if int8:
        INT8_KINDS.add(kind)


def kernel_kind(func: tirx.PrimFunc) -> str | None:
    return str(func.attrs[KERNEL_ATTR]) if KERNEL_ATTR in func.attrs else None


def default_schedule(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
    """The hand-written schedule of a lowbit kernel for ``target``, its u8 x s8 products
    tensorized with the target's instruction set (isa/): None if the kernel is not ours, the
    target is not an LLVM CPU, or (int8 kernels) the target has no registered instruction
    set."""
    kind = kernel_kind(func)
    if kind not in SCHEDULES or target.kind.name != "llvm":
        return None
    isa = isa_of(target)
    if kind in INT8_KINDS and isa is None:
        return None
    return SCHEDULES[kind](s_tir.Schedule(func), isa)


# ---- numpy references (exact integer accumulation) -------------------------------------------
def reference_linear_u8s8(x_u8, w_i8, corr_i32, scale_f32, bias_f32):
    """numpy ``linear_u8s8``: int64 accumulation, then the fp32 epilogue."""
    import numpy as np

    n = corr_i32.shape[0]
    a, b, c, d = w_i8.shape
    w = w_i8.transpose(0, 2, 1, 3).reshape(a * c, b * d)[:n].astype(np.int64)
    acc = x_u8.astype(np.int64) @ w.T
    return (acc - corr_i32).astype(np.float32) * scale_f32 + bias_f32


def reference_activation(y, act: str):
    """numpy ``act`` in float64 (exact erf / tanh: the kernel's fast polynomials differ by
    about 1e-7 relative, so a requantized output may sit one step off at a rounding tie)."""
    import math

    import numpy as np

    if act == "none":
        return y
    if act == "relu":
        return np.maximum(y, 0.0)
    if act == "gelu":
        return y * (0.5 + 0.5 * np.vectorize(math.erf)(y * 0.7071067811865476))
    if act == "gelu_tanh":
        return y * (0.5 + 0.5 * np.tanh(0.7978845608028654 * (y + 0.044715 * y ** 3)))
    raise ValueError(f"unknown activation {act!r}")


def reference_linear_u8s8_q(x_u8, w_i8, corr_i32, scale_f32, bias_f32, oq_f32, *,
                            act: str = "none", qmin: int = 0, qmax: int = 255):
    """numpy ``linear_u8s8_q``: the W8A8 reference, ``act``, then round half to even."""
    import numpy as np

    y = reference_activation(
        reference_linear_u8s8(x_u8, w_i8, corr_i32, scale_f32, bias_f32).astype(np.float64), act)
    q = np.round((y * oq_f32[0]).astype(np.float32)) + oq_f32[1]
    return np.clip(q, qmin, qmax).astype(np.uint8)


def reference_linear_w4a16(x_f32, w_u4x2, scale_f32, bias_f32):
    """numpy ``linear_w4a16`` (float64 accumulation)."""
    import numpy as np

    k2, n = w_u4x2.shape
    lo = (w_u4x2 & 15).astype(np.int64) - 8
    hi = (w_u4x2 >> 4).astype(np.int64) - 8
    w = np.stack([lo, hi], axis=1).reshape(2 * k2, n)                  # [K, N]
    group = 2 * k2 // scale_f32.shape[0]
    w = w * np.repeat(scale_f32.astype(np.float64), group, axis=0)
    return (x_f32.astype(np.float64) @ w + bias_f32).astype(np.float32)


REFERENCES = {"linear_u8s8": reference_linear_u8s8, "linear_u8s8_q": reference_linear_u8s8_q,
              "linear_w4a16": reference_linear_w4a16}


def reference_options(func: tirx.PrimFunc) -> dict:
    """Keyword arguments of a kernel's numpy reference, read from the kernel's attributes."""
    if KERNEL_ATTR in func.attrs and str(func.attrs[KERNEL_ATTR]) == "linear_u8s8_q":
        return {"act": str(func.attrs["lowbit.act"]), "qmin": int(func.attrs["lowbit.qmin"]),
                "qmax": int(func.attrs["lowbit.qmax"])}
    return {}


from lowbit.backends.tvm import peg_kernel  # noqa: F401  (registers linear_u8s8_peg)
