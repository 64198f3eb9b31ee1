"""The pair form on ``vpmaddwd``: AVX-512BW (zmm) and AVX2 (ymm), exact.

Without VNNI the usual x86 int8 product is ``vpmaddubsw`` (u8 x s8 -> s16 pair sums), which
SATURATES: 255 * 127 * 2 = 64770 > 32767 (onnxruntime's AVX2 kernel uses it; its outputs
drift up to 37 steps on AVX2 hosts). Here both operands are widened to 16 bits first
(activations zero-extended, weights sign-extended) and ``vpmaddwd`` multiplies 16-bit pairs
into exact 32-bit sums::

    C_i32[i, h] += u8(A[2h]) * s8(B[i, 2h]) + u8(A[2h+1]) * s8(B[i, 2h+1])      (h = 0, 1)

|each product| <= 255 * 128 and a pair sum <= 65280, far inside int32. On one 16x4 weight
block (64 bytes of ``[N/16, K/4, 16, 4]``, pack.py) the 4 activations are broadcast as four
16-bit values repeated; one ``vpmaddwd`` over R rows of 4 weights gives those rows' two pair
sums, adjacent, which is exactly the row-major layout of ``C [16, 2]``:

    ymm (AVX2):      4 instructions, rows 4q..4q+3 -> C[4q:4q+4, 0:2]  (8 x int32 each)
    zmm (AVX-512BW): 2 instructions, rows 8q..8q+7 -> C[8q:8q+8, 0:2]  (16 x int32 each)

The kernel keeps C's two halves as separate accumulators over all of K and adds them once in
its epilogue (kernels/cpu.py), so the inner loop is one widening load, one multiply-add and one
add per instruction; a 16-bit multiply-add does half the work of ``vpdpbusd`` per lane.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from lowbit.backends.tvm.kernels.isa.base import Isa

__all__ = ["AVX2", "AVX512BW"]

YMM_INTRIN = "lowbit_madd_16x4_u8s8s32_avx2"
ZMM_INTRIN = "lowbit_madd_16x4_u8s8s32_avx512bw"


@T.prim_func(s_tir=True)
def _desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16, 2), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16, 0:2])
        for i, h, t in T.grid(16, 2, 2):
            with T.sblock("update"):  # iter vars in rfactor's order: the factored axis first
                vh, vi, vt = T.axis.remap("SSR", [h, i, t])
                C[vi, vh] = C[vi, vh] + (T.cast(A[vh * 2 + vt], "int32")
                                         * T.cast(B[vi, vh * 2 + vt], "int32"))


def _impl(rows: int, llvm_name: str):
    """The block as 16/rows ``vpmaddwd`` of ``rows`` weight rows each."""
    lanes16, lanes32 = 4 * rows, 2 * rows          # int16 operands, int32 results
    calls = 16 // rows

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
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
                    T.Cast(f"int16x{lanes16}", B.vload([q * rows, 0], dtype=f"int8x{lanes16}")),
                    dtype=f"int32x{lanes32}")

    return impl


_registered: set[str] = set()


def _register(name: str, rows: int, llvm_name: str) -> str:
    if name not in _registered:
        TensorIntrin.register(name, _desc, _impl(rows, llvm_name), override=True)
        _registered.add(name)
    return name


AVX512BW = Isa(
    name="avx512bw", title="AVX-512BW", features=("avx512bw",),
    instruction="2 x vpmaddwd zmm (exact 16-bit pairs)", intrin=ZMM_INTRIN, pairs=True,
    # a 16-column block is 2 zmm accumulators (16 x 2 int32) and 2 zmm of widened weights:
    # 4 x 2 blocks = 16 accumulators + 4 weights + broadcast + product (of 32 zmm)
    mi_prefs=(4, 8, 6, 3, 2, 1), nt_prefs=(2, 1, 3),
    mnemonic="vpmaddwd", example_mcpu="skylake-avx512",
    register=lambda: _register(ZMM_INTRIN, 8, "llvm.x86.avx512.pmaddw.d.512"))

AVX2 = Isa(
    name="avx2", title="AVX2", features=("avx2",),
    instruction="4 x vpmaddwd ymm (exact 16-bit pairs)", intrin=YMM_INTRIN, pairs=True,
    # a 16-column block is 4 ymm accumulators and 4 ymm of widened weights: 2 x 1 blocks =
    # 8 accumulators + 4 weights + broadcast + product = 14 of 16 ymm (3 rows spill: measured)
    mi_prefs=(2, 1), nt_prefs=(1,),
    mnemonic="vpmaddwd", example_mcpu="x86-64-v3",
    register=lambda: _register(YMM_INTRIN, 4, "llvm.x86.avx2.pmadd.wd"))
