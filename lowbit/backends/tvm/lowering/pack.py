"""Weight packing for the integer kernels (done once, at compile time, in torch).

int8, in 16x4 blocks (named after VNNI's ``vpdpbusd``, 16 output lanes x 4-deep reduction per
instruction, the first user; every CPU instruction set of isa/ and the CUDA kernels read the
same layout, so a lowered graph does not depend on the target)::

    w_i8 [N, K]  ->  packed [Np/16, K/4, 16, 4],  packed[a, b, c, d] = w[16 a + c, 4 b + d]

N is zero-padded to Np (a multiple of 16); K must be a multiple of 4. The pair-form
instruction sets (AVX2, AVX-512BW: kernels/isa/madd.py) read this same layout with every value
sign-extended to int16 (128 bytes per 16x4 block); that copy is not made here but by the CPU
pipeline when the module is loaded (pipelines/cpu.py ``widen_weights``), so what is packed and
saved stays s8 for every target. With the weight in plain
[N, K] layout the tensorized kernel was fast and wrong (TVM-NOTES.md): the 16x4 block that one
instruction reads must be 64 contiguous bytes.

int4, two per byte along K, transposed so a row of N outputs decodes from contiguous bytes::

    w_i4 [N, K] (values -7..7)  ->  w_u4x2 [K/2, N],
    w_u4x2[k2, n] = (w[n, 2 k2] + 8) | (w[n, 2 k2 + 1] + 8) << 4

(offset 8 makes every nibble non-negative; decoding subtracts it again).
"""

from __future__ import annotations

import torch

__all__ = ["VNNI_K", "VNNI_N", "pack_int4", "pack_rowmajor", "pack_vnni", "unpack_int4",
           "unpack_vnni", "vnni_to_rowmajor"]

VNNI_N, VNNI_K = 16, 4


def pack_vnni(w_i8: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 -> [ceil(N/16), K/4, 16, 4] int8 (zero rows pad N)."""
    if w_i8.dtype != torch.int8 or w_i8.dim() != 2:
        raise ValueError(f"pack_vnni takes a 2-D int8 weight, got {w_i8.dtype} {tuple(w_i8.shape)}")
    n, k = w_i8.shape
    if k % VNNI_K:
        raise ValueError(f"pack_vnni needs K % {VNNI_K} == 0, got K={k}")
    n_pad = -(-n // VNNI_N) * VNNI_N
    w = torch.zeros(n_pad, k, dtype=torch.int8)
    w[:n] = w_i8
    return w.reshape(n_pad // VNNI_N, VNNI_N, k // VNNI_K, VNNI_K).permute(0, 2, 1, 3).contiguous()


def unpack_vnni(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_vnni`` (drops the padding rows)."""
    a, b, c, d = packed.shape
    return packed.permute(0, 2, 1, 3).reshape(a * c, b * d)[:n]


def pack_rowmajor(w_i8: torch.Tensor) -> torch.Tensor:
    """The sm_90a (wgmma + TMA) weight: [N, K] int8 -> row-major [Np, K] bytes (zero rows pad N
    to a multiple of 16) held in a tensor of ``pack_vnni``'s shape [Np/16, K/4, 16, 4], so the
    lowered graph keeps one signature for every target. TMA applies the 128-byte swizzle on the
    way into shared memory, so nothing else is rearranged."""
    return vnni_to_rowmajor(pack_vnni(w_i8))


def vnni_to_rowmajor(packed: torch.Tensor) -> torch.Tensor:
    """``pack_vnni``'s bytes rewritten as row-major [Np, K] in the same [Np/16, K/4, 16, 4]
    shape: ``packed.permute(0, 2, 1, 3).reshape(packed.shape)`` (what the CUDA pipeline's
    ``rowmajor_u8s8_weights`` inserts into the graph for sm_90a)."""
    return packed.permute(0, 2, 1, 3).contiguous().reshape(packed.shape)


def pack_int4(w_i4: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 holding -7..7 (or -8..7) -> [K/2, N] uint8, two nibbles per byte."""
    if w_i4.dim() != 2 or w_i4.shape[1] % 2:
        raise ValueError(f"pack_int4 takes a 2-D weight with even K, got {tuple(w_i4.shape)}")
    if w_i4.numel() and (w_i4.min() < -8 or w_i4.max() > 7):
        raise ValueError(f"pack_int4: values must lie in [-8, 7], got "
                         f"[{int(w_i4.min())}, {int(w_i4.max())}]")
    nib = (w_i4.to(torch.int16) + 8).to(torch.uint8).t()          # [K, N]
    return (nib[0::2] | (nib[1::2] << 4)).contiguous()


def unpack_int4(w_u4x2: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4``: [K/2, N] uint8 -> [N, K] int8."""
    lo = (w_u4x2 & 15).to(torch.int16) - 8
    hi = (w_u4x2 >> 4).to(torch.int16) - 8
    k2, n = w_u4x2.shape
    return torch.stack([lo, hi], dim=1).reshape(2 * k2, n).t().to(torch.int8).contiguous()
