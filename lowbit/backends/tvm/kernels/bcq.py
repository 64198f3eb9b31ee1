"""The BCQ bit-plane linear (``lowbit::bcq_linear``, binary-coding quantization, float activations).

The weight is q binary planes ``B_i in {-1, +1}`` with fp32 scales per output row and group of
g = K / G inputs (and an optional offset)::

    W'[n, k] = sum_i alpha[n, k // g, i] * B_i[n, k]  (+ offset[n, k // g])
    y[m, n]  = sum_k x[m, k] W'[n, k] + bias[n]

Kernel layout (lowering/bcq.py repacks the op's operands into it, once at load): N is cut
into column blocks of W (64; 16 for N < 256) and every block's bytes are one contiguous run,
so a parallel column strip streams one region from memory::

    planes_u8 [N/W, K/8, q, W]   bit j of planes[b, c, i, l] = B_i[W b + l, 8 c + j] > 0
    alpha_f32 [N/W, G, q, W],  offset_f32 [N/W, G, W] (only with an offset),  bias_f32 [N]

(N zero-padded to a multiple of W: zero alphas, the padding rows are never written out).

The compute definition (``bcq_linear``) decodes W' and multiplies; what runs on a CPU:

- decode (M <= 8, the GEMV), AVX-512: **table lookup** (LUT-GEMM / T-MAC style). Per row
  m and per 4 inputs k4 a 16-entry table of every signed sum
  ``T[m, k4, e] = sum_{j<4} (+x[m, 4 k4 + j] if bit j of e else -x[m, 4 k4 + j])`` (built once
  per call: M K / 4 x 16 floats); each 4-bit nibble of a plane byte indexes it, 16 output
  columns at a time with one ``vpermps`` (a 16-entry fp32 table is one zmm)::

      y[m, n] = sum_g sum_i alpha[n, g, i] sum_{k4 in g} T[m, k4, nibble_i(n, k4)]
                (+ offset[n, g] sum_{k in g} x[m, k]) + bias[n]

  per 16 columns x 8 inputs x plane: one byte-to-dword load, one shift, and per row two
  lookups, an add and an FMA with the plane's alpha; the plane bytes are prefetched
  ``PREFETCH_STEPS`` steps ahead. From cache it runs at about 70 GB/s of planes + alphas on
  2 Zen 5 cores (one ``vpermps`` per cycle and core is the limit), from memory at 60-85% of
  the measured read bandwidth for q = 3 (docs/tvm.md).
- decode (M <= 4) without AVX-512 (AVX2; any LLVM CPU): **bit-plane unpack**: per plane the
  sum of the inputs whose bit is set, as masked adds (``vptestmd`` + masked ``vaddps``), then
  ``s_i = 2 sum_{bit} x - sum_g x`` and ``y = sum_i alpha_i s_i (+ offset sum_g x)``;
  8 masked adds per byte against the table's two lookups: 2-3x slower where both run.
- larger M (GEMM): per parallel column strip the [K, NJ] fp32 slice of W' is decoded once into
  a local buffer and reused by an MI x NJ register-tiled GEMM over every row tile.

Which form runs up to which M was chosen by measurement (``GEMV_MAX_M``;
benchmarks/kernels_bcq.py, docs/tvm.md). Both GEMV forms need groups of whole plane bytes
(g % 8 == 0); other groups take the GEMM at any M.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx
from tvm.script import tirx as T
from tvm.target import Target

from lowbit.backends.tvm.kernels import registry
from lowbit.backends.tvm.kernels.cpu import schedule_strip_gemm
from lowbit.backends.tvm.kernels.registry import finish, register_reference

__all__ = ["GEMV_FORMS", "GEMV_MAX_M", "PREFETCH_STEPS", "bcq_gemv", "bcq_linear",
           "block_width", "gemv_form", "has_avx512", "reference_bcq_linear", "schedule_gemm"]

GEMV_FORMS = ("lut", "bits")    # table lookup (AVX-512 vpermps), bit-plane masked adds
# rows up to which each GEMV form beats the strip-decoding GEMM (benchmarks/kernels_bcq.py,
# 4096 x 4096, q = 3, Zen 5, two runs: lut 0.95-1.02 vs gemm 1.94-2.44 ms at M = 8, 2.94-3.04
# vs 2.73-3.15 at 16; bits 1.59-1.69 vs 1.65-1.79 at M = 4, 4.3-4.8 vs 1.9-2.4 at 8)
GEMV_MAX_M = {"lut": 8, "bits": 4}
# the table-lookup GEMV prefetches (into L2) the plane bytes this many 8-input steps ahead:
# 4096 x 4096, q = 3, M = 1: 31 -> 38 GB/s (q = 2: 32 -> 35; q = 4: no change); 48 no better
PREFETCH_STEPS = 16
_PERMPS = "llvm.x86.avx512.permvar.sf.512"


def block_width(n: int) -> int:
    """W, the column-block width of the kernel layout for N outputs (module docstring)."""
    return 64 if n >= 256 else 16


def _check(n: int, k: int, q: int, group: int, width: int) -> None:
    if k % 8 or group < 1 or k % group:
        raise ValueError(f"bcq_linear needs K % 8 == 0 and a group dividing K, got K={k}, "
                         f"g={group}")
    if not 1 <= q <= 8:
        raise ValueError(f"bcq_linear takes 1..8 bit planes, got q={q}")
    if width % 16 or n < 1:
        raise ValueError(f"bcq_linear: block width must be a multiple of 16, got W={width}")


def bcq_linear(m: int, n: int, k: int, q: int, group: int, offset: bool,
               width: int | None = None) -> tirx.PrimFunc:
    """The BCQ linear for x [m, k] and q planes of an [n, k] weight, alphas per ``group``
    inputs, with or without an offset (module docstring: the layout and the math)."""
    width = width or block_width(n)
    _check(n, k, q, group, width)
    n_pad = -(-n // width) * width
    nb, ng = n_pad // width, k // group
    x = te.placeholder((m, k), "float32", name="x_f32")
    planes = te.placeholder((nb, k // 8, q, width), "uint8", name="planes_u8")
    alpha = te.placeholder((nb, ng, q, width), "float32", name="alpha_f32")
    off = te.placeholder((nb, ng, width), "float32", name="offset_f32") if offset else None
    bias = te.placeholder((n,), "float32", name="bias_f32")

    def weight(kk, j):
        b, lane, g = j // width, j % width, kk // group
        bit = [(planes[b, kk // 8, i, lane] >> (kk % 8).astype("uint8")) & tirx.const(1, "uint8")
               for i in range(q)]
        w = sum(alpha[b, g, i, lane] * (bit[i].astype("float32") * 2.0 - 1.0) for i in range(q))
        return w + off[b, g, lane] if offset else w

    wdq = te.compute((k, n), weight, name="w_f32")
    r = te.reduce_axis((0, k), name="k")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, r] * wdq[r, j], axis=r), name="mm_f32")
    y = te.compute((m, n), lambda i, j: mm[i, j] + bias[j], name="y_f32")
    args = [x, planes, alpha, *([off] if offset else []), bias, y]
    return finish(te.create_prim_func(args), "bcq_linear",
                  **{"lowbit.group": group, "lowbit.offset": int(offset)})


def _params(func: tirx.PrimFunc) -> dict:
    """m, n, k, q, group, offset, width of a ``bcq_linear`` kernel, read back from it."""
    shape = [[int(d) for d in p.shape] for p in func.params]   # TE params carry their shapes
    (m, k), (_, _, q, width), n = shape[0], shape[1], shape[-1][1]
    return {"m": m, "n": n, "k": k, "q": q, "group": int(func.attrs["lowbit.group"]),
            "offset": bool(int(func.attrs["lowbit.offset"])), "width": width}


# ---- GEMV (M <= GEMV_MAX_M): hand-written TIR, same parameters as the definition ---------------
def bcq_gemv(m: int, n: int, k: int, q: int, group: int, offset: bool, width: int,
             form: str = "lut") -> tirx.PrimFunc:
    """The decode kernel in ``form`` ("lut": AVX-512 only; "bits": any LLVM CPU), a TIR
    PrimFunc with the parameters of ``bcq_linear(m, n, k, q, group, offset, width)``."""
    _check(n, k, q, group, width)
    if form not in GEMV_FORMS:
        raise ValueError(f"bcq_gemv: form must be one of {GEMV_FORMS}, got {form!r}")
    if group % 8:
        raise ValueError(f"bcq_gemv needs the group to be a multiple of 8 (whole plane bytes), "
                         f"got g={group}")
    n_pad = -(-n // width) * width
    nb, kb, gb, ng, nt = n_pad // width, k // 8, group // 8, k // group, width // 16
    perm, ahead = _PERMPS, PREFETCH_STEPS

    def v16(dtype: str) -> str:
        return f"{dtype}x16"

    @T.macro
    def group_sums(x, xs):
        for i, g in T.grid(m, ng):
            xs[i, g] = T.float32(0)
            for r in range(group):
                xs[i, g] = xs[i, g] + x[i, g * group + r]

    @T.macro
    def write_out(acc, bias, y, b):
        for i, t in T.grid(m, nt):
            for lane in T.vectorized(16):
                if b * width + t * 16 + lane < n:
                    y[i, b * width + t * 16 + lane] = (acc[i, t, lane]
                                                       + bias[b * width + t * 16 + lane])

    @T.macro
    def lut_body(x, planes, alpha, off, bias, y):
        lut = T.alloc_buffer((m, k // 4, 16), "float32")
        xs = T.alloc_buffer((m, ng), "float32")
        for i, k4 in T.grid(m, k // 4):
            for e in T.vectorized(16):
                lut[i, k4, e] = (T.Cast("float32", (e & 1) * 2 - 1) * x[i, 4 * k4]
                                 + T.Cast("float32", ((e >> 1) & 1) * 2 - 1) * x[i, 4 * k4 + 1]
                                 + T.Cast("float32", ((e >> 2) & 1) * 2 - 1) * x[i, 4 * k4 + 2]
                                 + T.Cast("float32", ((e >> 3) & 1) * 2 - 1) * x[i, 4 * k4 + 3])
        if offset:
            group_sums(x, xs)
        for b in T.parallel(nb):
            acc = T.alloc_buffer((m, nt, 16), "float32", scope="local")
            for i, t in T.grid(m, nt):
                acc[i, t, T.ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)
            for g in range(ng):
                for c in range(gb):
                    for line in T.unroll((q * width + 63) // 64):    # 64-byte lines of a step
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.prefetch.p0", T.address_of(planes[
                                b, T.min(g * gb + c + ahead, kb - 1), line * 64 // width,
                                line * 64 % width]), T.int32(0), T.int32(2), T.int32(1)))
                    for t in T.unroll(nt):
                        for p in T.unroll(q):
                            for i in T.unroll(m):
                                acc[i, t, T.ramp(0, 1, 16)] = acc.vload(
                                    [i, t, 0], v16("float32")) + alpha.vload(
                                    [b, g, p, t * 16], v16("float32")) * (
                                    T.call_llvm_pure_intrin(
                                        v16("float32"), T.llvm_lookup_intrinsic_id(perm),
                                        lut.vload([i, 2 * (g * gb + c), 0], v16("float32")),
                                        T.Cast(v16("int32"), planes.vload(
                                            [b, g * gb + c, p, t * 16], v16("uint8"))))
                                    + T.call_llvm_pure_intrin(
                                        v16("float32"), T.llvm_lookup_intrinsic_id(perm),
                                        lut.vload([i, 2 * (g * gb + c) + 1, 0], v16("float32")),
                                        T.Cast(v16("int32"), planes.vload(
                                            [b, g * gb + c, p, t * 16], v16("uint8")))
                                        >> T.Broadcast(T.int32(4), 16)))
                if offset:
                    for i, t in T.grid(m, nt):
                        acc[i, t, T.ramp(0, 1, 16)] = acc.vload([i, t, 0], v16("float32")) + (
                            off.vload([b, g, t * 16], v16("float32"))
                            * T.Broadcast(xs[i, g], 16))
            write_out(acc, bias, y, b)

    @T.macro
    def bits_body(x, planes, alpha, off, bias, y):
        xs = T.alloc_buffer((m, ng), "float32")
        group_sums(x, xs)
        for b in T.parallel(nb):
            acc = T.alloc_buffer((m, nt, 16), "float32", scope="local")
            part = T.alloc_buffer((m, q, 16), "float32", scope="local")
            for t in range(nt):
                for i in range(m):
                    acc[i, t, T.ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)
                for g in range(ng):
                    for i, p in T.grid(m, q):
                        part[i, p, T.ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)
                    for c in range(gb):
                        for p in T.unroll(q):
                            for j in T.unroll(8):
                                for i in T.unroll(m):
                                    part[i, p, T.ramp(0, 1, 16)] = part.vload(
                                        [i, p, 0], v16("float32")) + T.Select(
                                        (T.Cast(v16("int32"), planes.vload(
                                            [b, g * gb + c, p, t * 16], v16("uint8")))
                                         & T.Broadcast(T.int32(1) << j, 16))
                                        != T.Broadcast(T.int32(0), 16),
                                        T.Broadcast(x[i, g * group + 8 * c + j], 16),
                                        T.Broadcast(T.float32(0), 16))
                    for i in range(m):
                        for p in T.unroll(q):
                            acc[i, t, T.ramp(0, 1, 16)] = acc.vload([i, t, 0], v16("float32")) + (
                                alpha.vload([b, g, p, t * 16], v16("float32")) * (
                                    part.vload([i, p, 0], v16("float32"))
                                    * T.Broadcast(T.float32(2), 16)
                                    - T.Broadcast(xs[i, g], 16)))
                        if offset:
                            acc[i, t, T.ramp(0, 1, 16)] = acc.vload([i, t, 0], v16("float32")) + (
                                off.vload([b, g, t * 16], v16("float32"))
                                * T.Broadcast(xs[i, g], 16))
            write_out(acc, bias, y, b)

    body = lut_body if form == "lut" else bits_body
    if offset:
        @T.prim_func
        def main(x_f32: T.Buffer((m, k), "float32"),
                 planes_u8: T.Buffer((nb, kb, q, width), "uint8"),
                 alpha_f32: T.Buffer((nb, ng, q, width), "float32"),
                 offset_f32: T.Buffer((nb, ng, width), "float32"),
                 bias_f32: T.Buffer((n,), "float32"), y_f32: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            body(x_f32, planes_u8, alpha_f32, offset_f32, bias_f32, y_f32)
    else:
        @T.prim_func
        def main(x_f32: T.Buffer((m, k), "float32"),
                 planes_u8: T.Buffer((nb, kb, q, width), "uint8"),
                 alpha_f32: T.Buffer((nb, ng, q, width), "float32"),
                 bias_f32: T.Buffer((n,), "float32"), y_f32: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            body(x_f32, planes_u8, alpha_f32, None, bias_f32, y_f32)
    return finish(main, "bcq_linear", **{"lowbit.group": group, "lowbit.offset": int(offset),
                                         "lowbit.form": form})


# ---- GEMM: decode a column strip once, register-tiled fp32 GEMM over it ------------------------
def schedule_gemm(sch: s_tir.Schedule) -> s_tir.Schedule:
    """Per parallel strip of NJ columns: decode the [K, NJ] strip of W' once, then an MI x NJ
    register tile for every row tile (the W4A16 GEMM's schedule: ``cpu.schedule_strip_gemm``)."""
    return schedule_strip_gemm(sch)


def has_avx512(target: Target) -> bool:
    """Whether an LLVM ``target`` has AVX-512F (the table-lookup GEMV's ``vpermps zmm``)."""
    from tvm.target.codegen import target_has_features

    try:
        return target.kind.name == "llvm" and bool(target_has_features("avx512f", target))
    except Exception:  # noqa: BLE001  (an mcpu LLVM does not know: no features)
        return False


def gemv_form(target: Target) -> str:
    """The GEMV form for ``target``: table lookup where AVX-512 has it, else bit-plane adds."""
    return "lut" if has_avx512(target) else "bits"


def _on_cpu(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
    """``bcq_linear`` on an LLVM target: the target's GEMV form up to its ``GEMV_MAX_M`` rows
    (groups of whole plane bytes), the strip-decoding GEMM otherwise."""
    p, form = _params(func), gemv_form(target)
    if p["m"] <= GEMV_MAX_M[form] and p["group"] % 8 == 0:
        return s_tir.Schedule(bcq_gemv(**p, form=form))
    return schedule_gemm(s_tir.Schedule(func))


# ---- reference -------------------------------------------------------------------------------
def reference_bcq_linear(x_f32, planes_u8, alpha_f32, *rest):
    """numpy ``bcq_linear`` (float64) on the kernel layout; ``rest`` is (offset, bias) or
    (bias,), the kernel's parameters after the alphas."""
    if len(rest) not in (1, 2):
        raise ValueError(f"reference_bcq_linear takes (offset, bias) or (bias,) after the "
                         f"alphas, got {len(rest)} arrays")
    off, bias = (None, rest[0]) if len(rest) == 1 else rest
    nb, kb, q, width = planes_u8.shape
    k, n = 8 * kb, bias.shape[0]
    bits = (planes_u8[..., None] >> np.arange(8, dtype=np.uint8)) & 1      # [nb, kb, q, W, 8]
    signs = bits.astype(np.float64).transpose(2, 0, 3, 1, 4).reshape(q, nb * width, k) * 2 - 1
    ng = alpha_f32.shape[1]
    a = alpha_f32.astype(np.float64).transpose(2, 0, 3, 1).reshape(q, nb * width, ng)
    w = (signs * np.repeat(a, k // ng, axis=2)).sum(0)
    if off is not None:
        w += np.repeat(off.astype(np.float64).transpose(0, 2, 1).reshape(nb * width, ng),
                       k // ng, axis=1)
    return (x_f32.astype(np.float64) @ w[:n].T + bias).astype(np.float32)


registry.register("bcq_linear", "llvm", _on_cpu)
register_reference("bcq_linear", reference_bcq_linear)
