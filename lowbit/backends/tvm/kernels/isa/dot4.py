"""The dot form on ``vpdpbusd``: AVX-512 VNNI (one zmm per block) and AVX-VNNI (two ymm).

One ``vpdpbusd`` does, for L output lanes i and a 4-deep reduction::

    C_i32[i] += sum_{k<4} u8(A[k]) * s8(B[i, k])          (A broadcast to all lanes)

with exact int32 sums (no 16-bit intermediate). The B operand is the 16x4 block of a weight
packed as ``[N/16, K/4, 16, 4]`` (pack.py): 64 contiguous bytes, row i = output channel. The
zmm form takes the block at once; the ymm form (AVX-VNNI, 256-bit, VEX-encoded: client chips
from Alder Lake, Zen 5) takes rows 0-7 and rows 8-15 in two instructions.

TVM 0.27 registers a ``dot_16x4_vnni`` intrinsic but passes the u8/s8 operands as
``int32x16`` while the LLVM it bundles declares ``llvm.x86.avx512.vpdpbusd.512`` with
``<64 x i8>`` operands, so every use fails LLVM verification (TVM-NOTES.md). Ours reinterpret
the operands to ``int8x64`` / ``int8x32``. ``register_stock`` also puts the fixed body under
the stock name for MetaSchedule's built-in VNNI rule. LLVM selects the VEX encoding of the
256-bit intrinsic on targets with AVX-VNNI and no AVX-512 VL.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from lowbit.backends.tvm.kernels.isa.base import Isa

__all__ = ["AVX512_VNNI", "AVX_VNNI", "register_stock"]

ZMM_INTRIN = "lowbit_dot_16x4_u8s8s32_vnni"
YMM_INTRIN = "lowbit_dot_16x4_u8s8s32_avxvnni"
STOCK_NAME = "dot_16x4_vnni"


@T.prim_func(s_tir=True)
def _desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


def _impl(rows: int, llvm_name: str):
    """The block as 16/rows ``vpdpbusd`` of ``rows`` weight rows (rows * 4 bytes) each."""
    lanes8 = 4 * rows

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i8 = T.reinterpret(
                T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), rows),
                dtype=f"int8x{lanes8}")
            for q in T.unroll(16 // rows):
                C[T.ramp(q * rows, 1, rows)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name),
                    C.vload([q * rows], dtype=f"int32x{rows}"), a_i8,
                    B.vload([q * rows, 0], dtype=f"int8x{lanes8}"), dtype=f"int32x{rows}")

    return impl


_zmm = _impl(16, "llvm.x86.avx512.vpdpbusd.512")
_ymm = _impl(8, "llvm.x86.avx512.vpdpbusd.256")


_registered: set[str] = set()


def _register(name: str, impl, w_dtype: str | None = None) -> str:
    if w_dtype not in (None, "int8"):
        raise ValueError(f"{name}: the dot form reads the packed s8 weights, not {w_dtype}")
    if name not in _registered:
        TensorIntrin.register(name, _desc, impl, override=True)
        _registered.add(name)
    return name


def register_stock() -> None:
    """Also register the fixed zmm body over the stock ``dot_16x4_vnni``. This first imports
    TVM's own intrinsic package, which takes 20-50 s here (it parses every CUDA intrinsic), so
    only callers that need the stock name (none today) should ask for it."""
    if STOCK_NAME not in _registered:
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the stock, broken one first)

        TensorIntrin.register(STOCK_NAME, _desc, _zmm, override=True)
        _registered.add(STOCK_NAME)


AVX512_VNNI = Isa(
    name="avx512_vnni", title="AVX-512 VNNI", features=("avx512vnni", "avx512bw"),
    instruction="vpdpbusd zmm (16 lanes x 4)", intrin=ZMM_INTRIN, pairs=False,
    # 8 x 3 blocks = 24 zmm accumulators + 3 weight blocks + 1 broadcast (32 zmm)
    mi_prefs=(8, 6, 4, 3, 2, 1), nt_prefs=(3, 4, 2, 1),
    mnemonic="vpdpbusd", example_mcpu="cascadelake",
    register=lambda w_dtype=None: _register(ZMM_INTRIN, _zmm, w_dtype))

AVX_VNNI = Isa(
    name="avx_vnni", title="AVX-VNNI", features=("avxvnni",),
    instruction="2 x vpdpbusd ymm (8 lanes x 4)", intrin=YMM_INTRIN, pairs=False,
    # a 16-column block is 2 ymm accumulators: 6 x 1 (12) + 2 weight halves + 1 broadcast
    mi_prefs=(6, 4, 3, 2, 1), nt_prefs=(1,),
    mnemonic="vpdpbusd", example_mcpu="alderlake",
    register=lambda w_dtype=None: _register(YMM_INTRIN, _ymm, w_dtype))
