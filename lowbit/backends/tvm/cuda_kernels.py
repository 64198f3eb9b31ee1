"""lowbit's integer kernels on CUDA: TIR launch shells around hand-written device functions.

The kernels of kernels.py (``linear_u8s8``, ``linear_w4a16``) are compute definitions; on CUDA
the rule ``CudaLowbitKernel`` replaces each by a TIR PrimFunc with the same parameters whose
body launches a grid and calls one device function of ``cuda_kernels.cu``::

    linear_u8s8 [M, K] x [Np/16, K/4, 16, 4]   ->  lowbit_gemm_u8s8_{128x128|64x64}
        tensor cores (mma.sync m16n8k32 u8.s8.s32), cp.async pipeline; K % 16 == 0
    linear_w4a16, M <= 4                      ->  lowbit_w4a16_init (y = bias), then
        lowbit_w4a16_gemv_{1,2,4}: split-K GEMV, dequantization fused, fp32 atomics
    linear_w4a16, M > 4                       ->  lowbit_w4a16_gemm (64x64 SIMT tiles, weights
        decoded into shared memory)

The .cu file is put in front of the CUDA source TVM generates (the ``tvm_callback_cuda_postproc``
hook, registered while a lowbit CUDA build runs), so nvcc compiles everything into one cubin.
Shapes are static: M, N, K and the group size are constants of each shell. A shape a device
function cannot take (K % 16 for int8, N % 8 for int4) is declined: the plain TIR definition
then goes to the dlight GPU rules (correct, slower).

The same weight layouts as on CPU (pack.py), so legalization is target-independent.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import dlight as dl
from tvm.script import tirx as T

__all__ = ["CUDA_SOURCE", "CudaLowbitKernel", "cuda_source_hook", "shell_u8s8", "shell_w4a16"]

KERNEL_ATTR = "lowbit.kernel"
CUDA_SOURCE = Path(__file__).with_name("cuda_kernels.cu")
NUM_SMS = 132          # H100 SXM; only steers tile and split-K choices
GEMV_MAX_M = 4


@functools.cache
def _source() -> str:
    return CUDA_SOURCE.read_text()


CALLED: set[str] = set()  # device functions the last CUDA builds called (tests read it)


def _postproc(code, target=None):
    import re

    code = str(code)
    CALLED.update(re.findall(r"\b(lowbit_(?:gemm_u8s8|w4a16)_\w+?)\(", code))
    if "lowbit_" in code and "LOWBIT_CUDA_KERNELS" not in code:
        code = _source() + "\n" + code
    return code


@contextlib.contextmanager
def cuda_source_hook():
    """Register the hook that prepends cuda_kernels.cu to TVM's generated CUDA source."""
    name = "tvm_callback_cuda_postproc"
    old = tvm.get_global_func(name, allow_missing=True)
    tvm.register_global_func(name, _postproc, override=True)
    try:
        yield
    finally:
        if old is not None:
            tvm.register_global_func(name, old, override=True)
        else:
            tvm_ffi.remove_global_func(name)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def shell_u8s8(m: int, n: int, k: int) -> tvm.tirx.PrimFunc:
    """The CUDA linear_u8s8 for x [m, k], w packed [Np/16, K/4, 16, 4] (see module docstring)."""
    if k % 16:
        raise ValueError(f"CUDA linear_u8s8 needs K % 16 == 0, got K={k}")
    n_pad = _cdiv(n, 16) * 16
    big = _cdiv(m, 128) * _cdiv(n, 128) >= NUM_SMS
    bm, threads = (128, 256) if big else (64, 128)
    fn = f"lowbit_gemm_u8s8_{bm}x{bm}"
    gx, gy = _cdiv(n, bm), _cdiv(m, bm)

    @T.prim_func
    def main(x: T.Buffer((m, k), "uint8"), w: T.Buffer((n_pad // 16, k // 4, 16, 4), "int8"),
             corr: T.Buffer((n,), "int32"), scale: T.Buffer((n,), "float32"),
             bias: T.Buffer((n,), "float32"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        bx = T.launch_thread("blockIdx.x", gx)  # noqa: F841
        by = T.launch_thread("blockIdx.y", gy)  # noqa: F841
        tx = T.launch_thread("threadIdx.x", threads)  # noqa: F841
        T.evaluate(T.call_extern("int32", fn, x.data, w.data, corr.data, scale.data, bias.data,
                                 y.data, m, n, k))

    return main.with_attr(KERNEL_ATTR, "linear_u8s8")


def _split_k(n: int, groups: int) -> int:
    """Groups of rows per block for the GEMV: about 16 warps per SM in all, 4 per block."""
    tiles = _cdiv(n, 256)
    warps_per_tile = min(groups, max(1, _cdiv(16 * NUM_SMS, tiles)))
    blocks_per_tile = _cdiv(warps_per_tile, 4)
    return _cdiv(groups, blocks_per_tile)


def shell_w4a16(m: int, n: int, k: int, group: int) -> tvm.tirx.PrimFunc:
    """The CUDA linear_w4a16 for x [m, k], w [K/2, N] two nibbles a byte, scale [K/g, N]."""
    if n % 8:
        raise ValueError(f"CUDA linear_w4a16 needs N % 8 == 0, got N={n}")

    if m <= GEMV_MAX_M:
        mr = next(r for r in (1, 2, 4) if r >= m)
        if mr != m:
            raise ValueError(f"CUDA int4 GEMV takes M in (1, 2, 4), got M={m}")
        gpb = _split_k(n, k // group)
        gx, gy = _cdiv(n, 256), _cdiv(k // group, gpb)
        init_blocks = _cdiv(m * n, 256)
        fn = f"lowbit_w4a16_gemv_{mr}"

        @T.prim_func
        def main(x: T.Buffer((m, k), "float32"), w: T.Buffer((k // 2, n), "uint8"),
                 scale: T.Buffer((k // group, n), "float32"), bias: T.Buffer((n,), "float32"),
                 y: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            with T.launch_thread("blockIdx.x", init_blocks):
                with T.launch_thread("threadIdx.x", 256):
                    T.evaluate(T.call_extern("int32", "lowbit_w4a16_init", bias.data, y.data,
                                             m, n))
            with T.launch_thread("blockIdx.x", gx):
                with T.launch_thread("blockIdx.y", gy):
                    with T.launch_thread("threadIdx.x", 128):
                        T.evaluate(T.call_extern("int32", fn, x.data, w.data, scale.data,
                                                 y.data, n, k, group, gpb))

        return main.with_attr(KERNEL_ATTR, "linear_w4a16")

    gx, gy = _cdiv(n, 64), _cdiv(m, 64)

    @T.prim_func
    def gemm(x: T.Buffer((m, k), "float32"), w: T.Buffer((k // 2, n), "uint8"),
             scale: T.Buffer((k // group, n), "float32"), bias: T.Buffer((n,), "float32"),
             y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        bx = T.launch_thread("blockIdx.x", gx)  # noqa: F841
        by = T.launch_thread("blockIdx.y", gy)  # noqa: F841
        tx = T.launch_thread("threadIdx.x", 256)  # noqa: F841
        T.evaluate(T.call_extern("int32", "lowbit_w4a16_gemm", x.data, w.data, scale.data,
                                 bias.data, y.data, m, n, k, group))

    return gemm.with_attr(KERNEL_ATTR, "linear_w4a16")


def arg_shapes(func: tvm.tirx.PrimFunc) -> list[list[int]]:
    """The static shapes of a PrimFunc's buffer parameters."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return [[int(d) for d in a.shape] for a in ArgInfo.from_prim_func(func)]


class CudaLowbitKernel(dl.ScheduleRule):
    """Replace a lowbit kernel (kernels.py) by its CUDA shell on CUDA targets."""

    def apply(self, func, target, tunable):
        if (not isinstance(func, tvm.tirx.PrimFunc) or target.kind.name != "cuda"
                or KERNEL_ATTR not in func.attrs):
            return None
        kind = str(func.attrs[KERNEL_ATTR])
        shapes = arg_shapes(func)
        if kind == "linear_u8s8":
            (m, k), n = shapes[0], shapes[2][0]
            new = shell_u8s8(m, n, k)
        elif kind == "linear_w4a16":
            (m, k), (_, n) = shapes[0], shapes[1]
            group = k // shapes[2][0]
            new = shell_w4a16(m, n, k, group)
        else:
            return None
        return tvm.s_tir.Schedule(new)
