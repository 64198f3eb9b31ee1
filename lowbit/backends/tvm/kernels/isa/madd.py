"""The pair form on ``vpmaddwd``: AVX-512BW (zmm) and AVX2 (ymm), exact.

Without VNNI the usual x86 int8 product is ``vpmaddubsw`` (u8 x s8 -> s16 pair sums), which
SATURATES: 255 * 127 * 2 = 64770 > 32767 (onnxruntime's AVX2 kernel uses it; its outputs
drift up to 37 steps on AVX2 hosts). Here both operands are 16-bit (activations
zero-extended, weights sign-extended) and ``vpmaddwd`` multiplies 16-bit pairs into exact
32-bit sums::

    C_i32[i, h] += u8(A[2h]) * s8(B[i, 2h]) + u8(A[2h+1]) * s8(B[i, 2h+1])      (h = 0, 1)

|each product| <= 255 * 128 and a pair sum <= 65280, far inside int32.

Pre-widened weights: these entries declare ``weight_dtype="int16"``, so their kernels read the
packed weight ``[N/16, K/4, 16, 4]`` (pack.py) as int16, the s8 values sign-extended once
(128 bytes per 16x4 block). The CPU pipeline computes it from the s8 parameter when the module
is loaded (pipelines/cpu.py: an ``astype`` that LiftTransformParams moves into
``main_transform_params``), so a lowered graph and a saved module still hold s8 weights. The
block's weight operand is then a plain vector load, which LLVM folds into
``vpmaddwd ymm, ymm, [mem]``; with s8 weights every block is sign-extended again
(``vpmovsxbw``) for every row tile, in the inner loop. The price: on these targets the weights
take twice the memory at run time. The intrinsic is also registered over s8 weights (that
per-block widening), so a kernel built directly with s8 weights still runs on these targets.

On one 16x4 block the 4 activations are broadcast as four 16-bit values repeated; one
``vpmaddwd`` over R rows of 4 weights gives those rows' two pair sums, adjacent, which is
exactly the row-major layout of ``C [16, 2]``:

    ymm (AVX2):      4 instructions, rows 4q..4q+3 -> C[4q:4q+4, 0:2]  (8 x int32 each)
    zmm (AVX-512BW): 2 instructions, rows 8q..8q+7 -> C[8q:8q+8, 0:2]  (16 x int32 each)

The kernel keeps C's two halves as separate accumulators over all of K and adds them once in
its epilogue (kernels/cpu.py), so the inner loop is one multiply-add from memory and one add
per instruction, plus one broadcast and zero-extension of 4 activations per row and block
step; a 16-bit multiply-add does half the work of ``vpdpbusd`` per lane.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from lowbit.backends.tvm.kernels.isa.base import Isa

__all__ = ["AVX2", "AVX512BW", "intrin_name"]

_LLVM = {"avx2": (4, "llvm.x86.avx2.pmadd.wd"),           # rows per instruction, intrinsic
         "avx512bw": (8, "llvm.x86.avx512.pmaddw.d.512")}


def intrin_name(isa: str, w_dtype: str) -> str:
    """``lowbit_madd_16x4_u8s16s32_avx2`` (int16 weights) / ``..._u8s8s32_...`` (int8)."""
    return f"lowbit_madd_16x4_u8{'s16' if w_dtype == 'int16' else 's8'}s32_{isa}"


def _desc(w_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), w_dtype, offset_factor=1),
        C: T.Buffer((16, 2), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16, 0:2])
            for i, h, t in T.grid(16, 2, 2):
                with T.sblock("update"):  # iter vars in rfactor's order: factored axis first
                    vh, vi, vt = T.axis.remap("SSR", [h, i, t])
                    C[vi, vh] = C[vi, vh] + (T.cast(A[vh * 2 + vt], "int32")
                                             * T.cast(B[vi, vh * 2 + vt], "int32"))

    return desc


def _impl(rows: int, llvm_name: str, w_dtype: str):
    """The block as 16/rows ``vpmaddwd`` of ``rows`` weight rows each: int16 weights are a
    plain load (LLVM folds it into the instruction's memory operand), int8 ones are
    sign-extended first (``vpmovsxbw``, per block, in the inner loop)."""
    lanes16, lanes32 = 4 * rows, 2 * rows          # int16 operands, int32 results
    calls = 16 // rows

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), w_dtype, offset_factor=1),
        C: T.Buffer((16, 2), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16, 0:2])
            # 4 bytes broadcast (a load), then zero-extended: the 4 u16 repeated per 64 bits
            a_u8 = T.reinterpret(
                T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), rows),
                dtype=f"uint8x{lanes16}")
            a_i16 = T.Cast(f"int16x{lanes16}", a_u8)
            for q in T.unroll(calls):
                C[q * rows, T.ramp(T.int32(0), 1, lanes32)] = C.vload(
                    [q * rows, 0], dtype=f"int32x{lanes32}") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), a_i16,
                    T.Cast(f"int16x{lanes16}", B.vload([q * rows, 0],
                                                       dtype=f"{w_dtype}x{lanes16}")),
                    dtype=f"int32x{lanes32}")

    return impl


_registered: set[str] = set()


def _register(isa: str, w_dtype: str | None = None) -> str:
    """Register ``isa``'s block intrinsic over ``w_dtype`` weights (default int16)."""
    w_dtype = w_dtype or "int16"
    if w_dtype not in ("int8", "int16"):
        raise ValueError(f"{isa}: the pair form reads int16 (or int8) weights, not {w_dtype}")
    name = intrin_name(isa, w_dtype)
    if name not in _registered:
        rows, llvm_name = _LLVM[isa]
        TensorIntrin.register(name, _desc(w_dtype), _impl(rows, llvm_name, w_dtype),
                              override=True)
        _registered.add(name)
    return name


AVX512BW = Isa(
    name="avx512bw", title="AVX-512BW", features=("avx512bw",),
    instruction="2 x vpmaddwd zmm (exact 16-bit pairs)", intrin=intrin_name("avx512bw", "int16"),
    pairs=True,
    # a 16-column block is 2 zmm accumulators (16 x 2 int32); its int16 weights (2 zmm) are
    # read from memory: 4 x 3 blocks = 24 accumulators + broadcast + products (of 32 zmm);
    # measured on a Zen 5 (BERT/MiniLM shapes, 2 threads): 4 x 3 0-3% faster than 4 x 2
    mi_prefs=(4, 8, 6, 3, 2, 1), nt_prefs=(3, 2, 1),
    mnemonic="vpmaddwd", example_mcpu="skylake-avx512",
    register=lambda w_dtype=None: _register("avx512bw", w_dtype), weight_dtype="int16")

AVX2 = Isa(
    name="avx2", title="AVX2", features=("avx2",),
    instruction="4 x vpmaddwd ymm (exact 16-bit pairs)", intrin=intrin_name("avx2", "int16"),
    pairs=True,
    # a 16-column block is 4 ymm accumulators; its int16 weights (4 ymm) are read from memory:
    # 1 x 3 blocks = 12 accumulators + broadcast + product = 14 of 16 ymm. Measured on a
    # Zen 5 (x86-64-v3 code, MiniLM/BERT shapes, 2 threads): 1.19-1.22x the s8-weight kernel
    # (2 x 1), against 1.15-1.19x for int16 weights at 2 x 1 (weights held in registers)
    mi_prefs=(1, 2), nt_prefs=(3, 2, 1),
    mnemonic="vpmaddwd", example_mcpu="x86-64-v3",
    register=lambda w_dtype=None: _register("avx2", w_dtype), weight_dtype="int16")
