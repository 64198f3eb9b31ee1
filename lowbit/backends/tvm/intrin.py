"""The AVX-512 VNNI dot-product intrinsic, registered so that it builds.

One ``vpdpbusd`` does, for 16 output lanes i and a 4-deep reduction::

    C_i32[i] += sum_{k<4} u8(A[k]) * s8(B[i, k])          (A broadcast to all 16 lanes)

TVM 0.27 registers this as ``dot_16x4_vnni`` but passes the u8/s8 operands as ``int32x16``,
while the LLVM it bundles declares ``llvm.x86.avx512.vpdpbusd.512`` with ``<64 x i8>``
operands, so every use fails LLVM verification (TVM-NOTES.md). Here the operands are
reinterpreted to ``int8x64`` first. We register the fix under our own name and also override
the stock name, so MetaSchedule's built-in VNNI rule (which looks it up by name) builds too.

The B operand is the 16x4 block of a weight pre-packed as ``[N/16, K/4, 16, 4]``
(pack.py): 64 contiguous bytes, row i = output channel, column k = input channel.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["VNNI_INTRIN", "register_vnni"]

VNNI_INTRIN = "lowbit_dot_16x4_u8s8s32_vnni"
STOCK_NAME = "dot_16x4_vnni"


@T.prim_func(s_tir=True)
def _dot_16x4_desc(
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


@T.prim_func(s_tir=True)
def _dot_16x4_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_u8x4 = A.vload([0], "uint8x4")
        a_i32 = T.reinterpret(a_u8x4, dtype="int32")
        a_i8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="int8x64")
        b_i8x64 = B.vload([0, 0], dtype="int8x64")
        c_i32x16 = C.vload([0], dtype="int32x16")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c_i32x16,
            a_i8x64,
            b_i8x64,
            dtype="int32x16",
        )


_registered = {"own": False, "stock": False}


def register_vnni(*, stock: bool = False) -> str:
    """Register (once) the fixed intrinsic as ``VNNI_INTRIN``; with ``stock`` also over the
    stock ``dot_16x4_vnni`` (for MetaSchedule). ``stock`` first imports TVM's own intrinsic
    package, which MetaSchedule imports anyway but which takes 20-50 s here (it parses every
    CUDA intrinsic), so untuned builds never ask for it."""
    if not _registered["own"]:
        TensorIntrin.register(VNNI_INTRIN, _dot_16x4_desc, _dot_16x4_vnni, override=True)
        _registered["own"] = True
    if stock and not _registered["stock"]:
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the stock, broken one first)

        TensorIntrin.register(STOCK_NAME, _dot_16x4_desc, _dot_16x4_vnni, override=True)
        _registered["stock"] = True
    return VNNI_INTRIN
