"""lowbit's integer kernels on CUDA: TIR launch shells around hand-written device functions.

The kernels of defs.py (``linear_u8s8``, ``linear_w4a16``) are compute definitions; their
CUDA implementations in the kernel registry (registry.py, applied by the ``LowbitKernel``
schedule rule) replace each by a TIR PrimFunc with the same parameters whose body launches a
grid and calls one device function of ``cuda_kernels.cu``::

    linear_u8s8 [M, K] x [Np/16, K/4, 16, 4]   ->  lowbit_gemm_u8s8_{128x128|64x64}
        tensor cores (mma.sync m16n8k32 u8.s8.s32), cp.async pipeline; K % 16 == 0
    linear_w4a16, M <= 4                      ->  lowbit_w4a16_gemv_{1..4}: one launch,
        split-K GEMV, dequantization fused, 16-byte loads double-buffered in registers; the
        first block of a column tile stores bias + its sum, the others add with fp32 atomics
    linear_w4a16, M > 4                       ->  lowbit_w4a16_gemm_tc (config "tc", g % 32 == 0,
        sm_80+: 64x64 tiles, mma.sync m16n8k16 f16, fp32 sums scaled per group; split-K with
        a y = bias launch and fp32 atomics on small grids) or
        lowbit_w4a16_gemm (config "simt": 64x64 SIMT tiles, weights decoded into shared memory)
    bcq_linear, M <= 4, g % 8 == 0            ->  lowbit_w4a16_init (y = bias), then
        lowbit_bcq_t256_{1,2} (M <= 2, 64-column blocks: 256-entry tables, one lookup per
        plane byte) or lowbit_bcq_gemv_{1..4} (16-entry tables): LUT-GEMM (tables of signed
        sums in shared memory, one bank per lane), split-K over chunks of inputs, fp32
        atomics; larger M: dlight

The .cu file is put in front of the CUDA source TVM generates (the ``tvm_callback_cuda_postproc``
hook, registered while a lowbit CUDA build runs), so nvcc compiles everything into one cubin.
Shapes are static: M, N, K and the group size are constants of each shell. A shape a device
function cannot take (K % 16 for int8, N % 8 for int4) is declined: the plain TIR definition
then goes to the dlight GPU rules (correct, slower).

The same weight layouts as on CPU (lowering/pack.py), so legalization is target-independent.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import tvm
import tvm_ffi
from tvm.script import tirx as T

from lowbit.backends.tvm.kernels import registry
from lowbit.backends.tvm.kernels.registry import KERNEL_ATTR

__all__ = ["CUDA_SOURCE", "WGMMA_CONFIGS", "cuda_source_hook", "kernel_configs",
           "read_config_table", "shell_bcq", "shell_u8s8", "shell_u8s8_wgmma", "shell_w4a16",
           "wgmma_arch"]

CUDA_SOURCE = Path(__file__).with_name("cuda_kernels.cu")
NUM_SMS = 132          # H100 SXM; only steers tile and split-K choices
GEMV_MAX_M = 4
CONFIG_TABLE = "cuda_kernels.json"   # in a tuning database folder (scripts/gpu_tune.py)

# Candidate configurations of the hand-written kernels (what scripts/gpu_tune.py times):
#   u8s8:  "<BM>x<BN>_<WM>x<WN>_s<STAGES>[_k<BK>]": CTA tile, warps along M and N, cp.async
#          stages, bytes of k per stage (64 without the suffix)
#   gemv:  "v<VEC>_u<U>_s<STAGES>_b<BLOCKS_PER_SM>": bytes per thread and row, rows per batch,
#          cp.async ring stages (STAGES - 1 batches in flight per thread), split-K aimed at that
#          many 4-warp blocks per SM in all
U8S8_CONFIGS = ("64x64_2x2_s4", "128x64_2x2_s4", "64x128_2x2_s4", "128x128_2x4_s3",
                "128x128_2x2_s4", "128x128_2x4_s4", "128x192_2x4_s3", "128x256_2x4_s3",
                "256x128_4x2_s3", "128x256_2x4_s4",
                # 128-byte k tiles (half the barriers per k)
                "64x64_2x2_s4_k128", "128x64_2x2_s3_k128", "128x64_2x2_s4_k128",
                "64x128_2x2_s3_k128", "128x128_2x2_s3_k128", "64x64_2x2_s6_k128",
                # 8 warps on 128-byte k tiles (more warps per SM to hide latency)
                "128x64_4x2_s3_k128", "128x128_4x2_s3_k128", "128x128_2x4_s3_k128",
                "64x128_2x4_s4_k128", "256x64_4x2_s3_k128", "128x64_4x2_s4_k128")
GEMV_CONFIGS = ("v16_u8_s2_b4", "v16_u8_s2_b3", "v16_u8_s2_b5", "v16_u8_s2_b8",
                "v16_u4_s4_b4", "v16_u4_s2_b4", "v16_u2_s4_b4", "v16_u4_s2_b2", "v8_u8_s4_b4",
                "v8_u16_s2_b4", "v8_u8_s2_b4", "v8_u8_s4_b8", "v8_u4_s2_b0", "v16_u4_s2_b0")
GEMV_XS = 2048         # floats of x one GEMV block stages in shared memory (cuda_kernels.cu)
GEMV_SEMS = 65536      # split-K counters, one per column tile (LOWBIT_GEMV_SEMS)


@functools.cache
def _source() -> str:
    return CUDA_SOURCE.read_text()


WGMMA_SOURCE = Path(__file__).with_name("cuda_wgmma.cu")


@functools.cache
def _wgmma_source() -> str:
    """cuda_wgmma.cu without its host launcher (TVM builds the tensor maps and launches)."""
    return "#define LOWBIT_WGMMA_DEVICE_ONLY 1\n" + WGMMA_SOURCE.read_text()


CALLED: set[str] = set()  # device functions the last CUDA builds called (tests read it)

_U8S8_RE = r"lowbit_gemm_u8s8_(\d+)x(\d+)_(\d+)x(\d+)_s(\d+)(?:_k(\d+))?"
_GEMV_RE = r"lowbit_w4a16_gemv_(\d)_v(\d+)_u(\d+)_s(\d+)"
_BCQ_RE = r"lowbit_bcq_gemv_(\d)_q(\d)_c(\d+)_o(\d)_p(\d)"
_T256_RE = r"lowbit_bcq_t256_(\d)_q(\d)_o(\d)"
T256_MIN_BLOCKS = 3   # blocks per SM the 256-entry kernel is compiled for (<= 80 registers)


def _wrappers(code: str) -> str:
    """One device function per kernel configuration the generated code calls (template
    instances of cuda_kernels.cu; noinline: each is compiled once however many shells call it)."""
    import re

    out = []
    for name in sorted(set(re.findall(rf"\b({_U8S8_RE})\(", code)), key=str):
        name, bm, bn, wm, wn, st, bk = name
        out.append(
            f"__device__ __noinline__ int {name}(const unsigned char* x, const signed char* w, "
            f"const int* corr, const float* scale, const float* bias, float* y, "
            f"unsigned char* smem, int M, int N, int K) {{ return lowbit_gemm_u8s8_impl<{bm}, "
            f"{bn}, {wm}, {wn}, {st}, {bk or 64}>(x, w, corr, scale, bias, y, smem, M, N, K); }}")
    for name in sorted(set(re.findall(rf"\b({_GEMV_RE})\(", code)), key=str):
        name, mr, vec, unroll, stages = name
        out.append(
            f"__device__ __noinline__ int {name}(const float* x, const unsigned char* w, "
            f"const float* s, const float* b, float* y, int N, int K, int g) {{ return "
            f"lowbit_w4a16_gemv_impl<{mr}, {vec}, {unroll}, {stages}>(x, w, s, b, y, N, K, g); }}")
    for name in sorted(set(re.findall(rf"\b({_BCQ_RE})\(", code)), key=str):
        name, mr, q, cols, off, pf = name
        out.append(
            f"__device__ __noinline__ int {name}(const float* x, const unsigned char* p, "
            f"const float* a, const float* o, float* y, unsigned char* lut, int N, int NP, "
            f"int K, int g, int W, int KC) {{ return lowbit_bcq_gemv_impl<{mr}, {q}, {cols}, "
            f"{'true' if off == '1' else 'false'}, {'true' if pf == '1' else 'false'}>(x, p, a, "
            f"o, y, reinterpret_cast<float*>(lut), N, NP, K, g, W, KC); }}")
    for name in sorted(set(re.findall(rf"\b({_T256_RE})\(", code)), key=str):
        name, mr, q, off = name
        out.append(   # inlined: the calling kernel's launch bounds cap its registers
            f"__device__ __forceinline__ int {name}(const float* x, const unsigned char* p, "
            f"const float* a, const float* o, float* y, unsigned char* lut, int N, int NP, "
            f"int K, int g, int W) {{ return lowbit_bcq_t256_impl<{mr}, {q}, "
            f"{'true' if off == '1' else 'false'}>(x, p, a, o, y, lut, N, NP, K, g, W); }}")
    return "\n".join(out)


def _t256_bounds(code: str) -> str:
    """``__launch_bounds__(256, T256_MIN_BLOCKS)`` on the kernels that call a 256-entry BCQ
    GEMV, declaration and definition (TVM writes the thread count only): on the H200
    (docs/gpu.md) it runs 5% faster at 3 blocks per SM (80 registers) than at the 96
    registers nvcc picks unbounded."""
    import re

    names = set()
    for m in re.finditer(r"__global__ void __launch_bounds__\(256\) (\w+)\([^)]*\)\s*\{", code):
        nxt = code.find("__global__", m.end())
        if re.search(rf"\b{_T256_RE}\(", code[m.end():nxt if nxt >= 0 else len(code)]):
            names.add(m.group(1))
    for name in names:
        code = code.replace(f"__launch_bounds__(256) {name}(",
                            f"__launch_bounds__(256, {T256_MIN_BLOCKS}) {name}(")
    return code


def _postproc(code, target=None):
    import re

    code = str(code)
    CALLED.update(re.findall(r"\b(lowbit_(?:gemm_u8s8|w4a16|bcq_gemv|bcq_t256)_\w+?)\(", code))
    wgmma = re.findall(rf"\b({_WGMMA_RE})\(", code)
    if "lowbit_" in code and "LOWBIT_CUDA_KERNELS" not in code:
        if wgmma:   # sm_90a shells (shell_u8s8_wgmma) only: the sm_80/sm_90 source is unchanged
            CALLED.update(wgmma)
            code = _wgmma_bounds(code)
            code = _wgmma_source() + "\n" + code
        code = _source() + "\n" + _wrappers(code) + "\n" + _t256_bounds(code)
    return code


_WGMMA_RE = r"lowbit_wgmma_u8s8_(?:128|64)x\d+_s\d+"


def _wgmma_bounds(code: str) -> str:
    """``__launch_bounds__(384, 1)`` / ``(256, 2)`` on the kernels that call the wgmma GEMM
    (TVM writes the thread count only): the register cap that cuda_wgmma.cu's ``setmaxnreg``
    split is computed from (one CTA per SM for BM = 128, two for BM = 64)."""
    import re

    found = {}
    for m in re.finditer(r"__global__ void __launch_bounds__\((384|256)\) (\w+)\(", code):
        nxt = code.find("__global__", m.end())
        call = re.search(rf"\b({_WGMMA_RE})\(", code[m.end():nxt if nxt >= 0 else len(code)])
        if call:
            found[m.group(2)] = (m.group(1), "2" if "_u8s8_64x" in call.group(1) else "1")
    for name, (threads, per_sm) in found.items():
        code = code.replace(f"__launch_bounds__({threads}) {name}(",
                            f"__launch_bounds__({threads}, {per_sm}) {name}(")
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


# ---- tuned configurations (a table in the tuning database folder) ---------------------------
_TABLE: dict = {}      # key -> entry, set by kernel_configs() during a build


def config_key(kind: str, shape, target) -> str:
    """``u8s8|M,N,K|sm_90`` / ``w4a16|M,N,K,group|sm_90``: the workload and the target arch."""
    arch = str(target.attrs["arch"]) if target is not None and "arch" in target.attrs else "sm_90"
    return f"{kind}|{','.join(str(int(v)) for v in shape)}|{arch}"


def read_config_table(folder) -> dict:
    path = Path(folder) / CONFIG_TABLE
    if not path.is_file():
        return {}
    import json

    return json.loads(path.read_text())


@contextlib.contextmanager
def kernel_configs(table: dict | None):
    """Use ``table`` (read_config_table) for the kernel configurations of the builds inside."""
    global _TABLE
    old, _TABLE = _TABLE, dict(table or {})
    try:
        yield
    finally:
        _TABLE = old


def _tuned(kind: str, shape, target, allowed) -> str | None:
    entry = _TABLE.get(config_key(kind, shape, target))
    cfg = entry.get("config") if isinstance(entry, dict) else None
    return cfg if cfg in allowed else None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _parse_u8s8(cfg: str) -> tuple[int, int, int, int, int, int]:
    tile, warps, st, *bk = cfg.split("_")
    bm, bn = map(int, tile.split("x"))
    wm, wn = map(int, warps.split("x"))
    return bm, bn, wm, wn, int(st[1:]), int(bk[0][1:]) if bk else 64


def default_u8s8(m: int, n: int, k: int) -> str:
    """The configuration without a tuned record: the best of scripts/gpu_tune.py's H100 sweep
    by shape class (docs/gpu.md)."""
    # H100 sweeps of 2026-11-22 (docs/gpu.md): 128-byte k tiles win almost everywhere; 64x64
    # (4 warps) until the grid holds ~4.5 such tiles per SM, then 128x64
    if _cdiv(m, 64) * _cdiv(n, 64) >= 600:
        return "128x64_2x2_s3_k128"
    return "64x64_2x2_s4_k128"


def shell_u8s8(m: int, n: int, k: int, config: str | None = None, target=None
               ) -> tvm.tirx.PrimFunc:
    """The CUDA linear_u8s8 for x [m, k], w packed [Np/16, K/4, 16, 4] (see module docstring).
    ``config``: one of U8S8_CONFIGS (default: the tuned table, else default_u8s8)."""
    if k % 16:
        raise ValueError(f"CUDA linear_u8s8 needs K % 16 == 0, got K={k}")
    cfg = config or _tuned("u8s8", (m, n, k), target, U8S8_CONFIGS) or default_u8s8(m, n, k)
    bm, bn, wm, wn, stages, bk = _parse_u8s8(cfg)
    n_pad = _cdiv(n, 16) * 16
    threads = wm * wn * 32
    smem = stages * (bm + bn) * bk
    fn = f"lowbit_gemm_u8s8_{cfg}"
    gx, gy = _cdiv(n, bn), _cdiv(m, bm)

    @T.prim_func
    def main(x: T.Buffer((m, k), "uint8"), w: T.Buffer((n_pad // 16, k // 4, 16, 4), "int8"),
             corr: T.Buffer((n,), "int32"), scale: T.Buffer((n,), "float32"),
             bias: T.Buffer((n,), "float32"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        bx = T.launch_thread("blockIdx.x", gx)  # noqa: F841
        by = T.launch_thread("blockIdx.y", gy)  # noqa: F841
        tx = T.launch_thread("threadIdx.x", threads)  # noqa: F841
        sm = T.alloc_buffer((smem,), "uint8", scope="shared.dyn")
        T.evaluate(T.call_extern("int32", fn, x.data, w.data, corr.data, scale.data, bias.data,
                                 y.data, sm.data, m, n, k))

    return main.with_attr(KERNEL_ATTR, "linear_u8s8").with_attr("lowbit.config", cfg)


# ---- sm_90a: the wgmma + TMA GEMM of cuda_wgmma.cu (issue 20) -------------------------------
# name "<BM>x<BN>_s<STAGES>[_p]" -> (BM, BN, stages, persistent); BK = 128 bytes. BM = 128: 384
# threads, one CTA per SM; BM = 64: 256 threads, two per SM. "_p": persistent grid of at most
# NUM_SMS x CTAs-per-SM CTAs walking the tiles (the same device function on a smaller grid).
WGMMA_CONFIGS = {
    "128x64_s4": (128, 64, 4, False), "128x64_s6": (128, 64, 6, False),
    "128x128_s4": (128, 128, 4, False), "128x192_s4": (128, 192, 4, False),
    "128x128_s6": (128, 128, 6, False), "128x192_s5": (128, 192, 5, False),
    "128x256_s3": (128, 256, 3, False), "64x64_s6": (64, 64, 6, False),
    "64x128_s4": (64, 128, 4, False), "64x192_s3": (64, 192, 3, False),
    "128x128_s4_p": (128, 128, 4, True), "128x192_s4_p": (128, 192, 4, True),
    "128x128_s6_p": (128, 128, 6, True), "128x192_s5_p": (128, 192, 5, True),
    "128x256_s3_p": (128, 256, 3, True), "64x128_s4_p": (64, 128, 4, True),
    "64x192_s3_p": (64, 192, 3, True)}


def wgmma_arch(target) -> bool:
    """True for targets that take the wgmma route: arch ``sm_90a`` (wgmma and setmaxnreg are
    sm_90a-only instructions; plain ``sm_90``, the default, keeps the mma.sync kernels)."""
    return target is not None and str(target.attrs.get("arch", "")) == "sm_90a"


def wgmma_smem(bm: int, bn: int, stages: int) -> int:
    """Dynamic shared memory of a configuration: cuda_wgmma.cu ``Cfg<BM, BN, STAGES>::SMEM``
    (stages, mbarriers, the consumers' epilogue parameters, 1024 B of alignment slack)."""
    return stages * (bm + bn) * 128 + 16 * stages + (bm // 64) * 12 * bn + 1024


def wgmma_launch(cfg: str, m: int, n: int) -> tuple[int, int, int]:
    """(threads, CTAs per SM, grid) of a configuration for an m x n output."""
    bm, bn, _, persistent = WGMMA_CONFIGS[cfg]
    per_sm = 1 if bm == 128 else 2
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    return 128 * (1 + bm // 64), per_sm, min(tiles, NUM_SMS * per_sm) if persistent else tiles


def default_wgmma(m: int, n: int, k: int) -> str:
    """The configuration without a tuned record, by the number of 64 x 64 output tiles. From the
    H200 run of 2026-12-04 (docs/gpu.md, wgmma section; benchmarks/results/wgmma_h200.json,
    kernel time under CUDA-graph replay): within 5% of the fastest of the 17 configurations on
    each of the 18 shapes of issue 20. Up to 128 such tiles (one wave of two CTAs per SM) the
    smallest tiles, 64x64 with a 6-deep ring (short latency chain per tile); up to 384 64x128;
    beyond, persistent 128x192 (the producer loads the next tile during the epilogue)."""
    del k
    t64 = _cdiv(m, 64) * _cdiv(n, 64)
    if t64 <= 128:
        return "64x64_s6"
    if t64 <= 384:
        return "64x128_s4"
    return "128x192_s4_p"


def shell_u8s8_wgmma(m: int, n: int, k: int, config: str | None = None, target=None
                     ) -> tvm.tirx.PrimFunc:
    """The sm_90a linear_u8s8: the same parameters as ``shell_u8s8`` (w typed
    [Np/16, K/4, 16, 4]) but w's bytes must be ROW-MAJOR [Np, K] (pack.py
    ``vnni_to_rowmajor``; the CUDA pipeline inserts that repack for sm_90a targets, see
    pipelines/cuda.py). The host part builds two TMA tensor maps (``tensormap_encode_tiled``,
    TVM's runtime.cuTensorMapEncodeTiled, once per call) that TVM passes to the kernel as
    ``const __grid_constant__ CUtensorMap`` parameters; the kernel calls
    ``lowbit_wgmma_u8s8_<BM>x<BN>_s<S>`` of cuda_wgmma.cu with their addresses. ``config``:
    one of WGMMA_CONFIGS (default: the tuned table, else default_wgmma)."""
    if k % 16 or k < 16:
        raise ValueError(f"CUDA wgmma linear_u8s8 needs K % 16 == 0, got K={k}")
    cfg = (config or _tuned("u8s8", (m, n, k), target, tuple(WGMMA_CONFIGS))
           or default_wgmma(m, n, k))
    bm, bn, stages, _ = WGMMA_CONFIGS[cfg]
    n_pad = _cdiv(n, 16) * 16
    smem = wgmma_smem(bm, bn, stages)
    fn = f"lowbit_wgmma_u8s8_{bm}x{bn}_s{stages}"      # "_p" only changes the grid
    threads, _, gx = wgmma_launch(cfg, m, n)

    @T.prim_func
    def main(x: T.Buffer((m, k), "uint8"), w: T.Buffer((n_pad // 16, k // 4, 16, 4), "int8"),
             corr: T.Buffer((n,), "int32"), scale: T.Buffer((n,), "float32"),
             bias: T.Buffer((n,), "float32"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        # host: TMA descriptors (dims and boxes innermost first; 128B swizzle = 3,
        # L2 promotion 256B = 3, out-of-bounds zero fill = 0), as cuda_wgmma.cu make_map
        tmx = T.Bind(T.tvm_stack_alloca("tensormap", 1), var=T.handle("tensormap"))
        T.evaluate(T.tensormap_encode_tiled(tmx, x.data, k, m, k, 128, bm, 1, 1,
                                            descriptor_dtype="uint8", rank=2, swizzle=3,
                                            l2_promotion=3, oob_fill=0))
        tmw = T.Bind(T.tvm_stack_alloca("tensormap", 1), var=T.handle("tensormap"))
        T.evaluate(T.tensormap_encode_tiled(tmw, w.data, k, n, k, 128, bn, 1, 1,
                                            descriptor_dtype="uint8", rank=2, swizzle=3,
                                            l2_promotion=3, oob_fill=0))
        bx = T.launch_thread("blockIdx.x", gx)  # noqa: F841  (tiles: stride gridDim.x)
        tx = T.launch_thread("threadIdx.x", threads)  # noqa: F841
        sm = T.alloc_buffer((smem,), "uint8", scope="shared.dyn")
        T.evaluate(T.call_extern("int32", fn, T.address_of(tmx), T.address_of(tmw), corr.data,
                                 scale.data, bias.data, y.data, sm.data, m, n, k))

    return (main.with_attr(KERNEL_ATTR, "linear_u8s8").with_attr("lowbit.config", cfg)
            .with_attr("lowbit.w_layout", "rowmajor"))


def _split_k(m: int, n: int, k: int, group: int, vec: int, unroll: int, blocks_per_sm: int
             ) -> tuple[int, int, int]:
    """The GEMV grid ``(unroll, gx, gy)``: 4-warp blocks on tiles of 32 * vec columns (gx),
    gy blocks per tile sharing its K/2 byte rows in batches of ``unroll`` rows (equal shares
    within one batch). gy: at most ``blocks_per_sm`` blocks per SM in one wave, the split with
    the least busiest-SM work (ceil(gx gy / NUM_SMS) blocks of 1/gy of a tile each: 16384 x
    8192 in 32 x 16 blocks, not 32 x 17, which put 5 blocks on some SMs and 4 on most); 0:
    no split. Few enough rows per block for its x to fit GEMV_XS floats of shared memory."""
    half = group // 2
    if group % 4 or k % group:
        raise ValueError(f"CUDA int4 GEMV needs group % 4 == 0 and K % group == 0, got "
                         f"K={k}, group={group}")
    while half % unroll:
        unroll //= 2
    if unroll % 2:
        raise ValueError(f"CUDA int4 GEMV: group {group} is not a multiple of 4 rows")
    gx = _cdiv(n, 32 * vec)
    if gx > GEMV_SEMS:
        raise ValueError(f"CUDA int4 GEMV: N={n} needs more than {GEMV_SEMS} column tiles")
    batches = (k // 2) // unroll
    gy = 1                                              # b0: no split unless x needs it
    if blocks_per_sm:   # the most per SM, once (gx * gy <= b * NUM_SMS): the least time
        # ceil(gx gy / NUM_SMS) * batches / gy; ties: more blocks (H200 sweep, docs/gpu.md)
        top = min(max(1, blocks_per_sm * NUM_SMS // gx), batches, 65535)
        gy = min(range(1, top + 1), key=lambda y: (_cdiv(gx * y, NUM_SMS) / y, -y))
    gy = max(gy, _cdiv(m * k, GEMV_XS - 2 * unroll * m))
    return unroll, gx, min(gy, batches, 65535)


def default_gemv(m: int, n: int, k: int, group: int) -> str:
    """H200 sweep (docs/gpu.md, "int4 weight-only GEMV on the H200"): 16-byte loads, 8 rows a
    batch, from 32 MiB of packed weights up for M <= 2 (M = 2: 3 blocks per SM, its registers
    fit 3); 8-byte loads below and for M = 3, 4 (twice the column tiles: more blocks for the
    small shapes, fewer registers)."""
    if m <= 2 and n % 16 == 0 and n * k // 2 >= 2**25:
        return "v16_u8_s2_b4" if m == 1 else "v16_u8_s2_b3"
    return "v8_u8_s4_b4" if m <= 2 else "v8_u8_s2_b4"


GEMM_CONFIGS = ("simt", "tc", "tc_k1")   # M > 4: lowbit_w4a16_gemm / lowbit_w4a16_gemm_tc
# (split-K by gemm_split / never split)


def gemm_tc_ok(group: int, target=None) -> bool:
    """The tensor-core int4 GEMM takes the shape (group % 32 == 0) and the target (sm_80+)."""
    import re

    arch = str(target.attrs["arch"]) if target is not None and "arch" in target.attrs else "sm_90"
    return group % 32 == 0 and int(re.sub(r"\D", "", arch) or 0) >= 80


GEMM_SPLIT_BLOCKS = 4 * NUM_SMS   # split K until the tc grid has ~4 blocks per SM


def gemm_split(m: int, n: int, k: int, group: int) -> tuple[int, int]:
    """Split-K of the tensor-core GEMM ``(splits, inputs per split)``: a grid of fewer than
    NUM_SMS / 2 64x64 tiles, or fewer than NUM_SMS with K >= 2048, is cut along K (whole
    groups, at least 128 inputs a split, up to about GEMM_SPLIT_BLOCKS blocks) so that more
    weight bytes are in flight; the splits add into y with fp32 atomics after a y = bias
    launch. The rule fits the H200 table of docs/gpu.md ("Prefill (M > 4): tensor cores"):
    the split won on every shape it takes, lost on 128x3072x768 (96 tiles, K = 768) and on
    M = 1000 at N = 768 (192 tiles), where the atomics cost more than the shorter k loop saves."""
    tiles = _cdiv(n, 64) * _cdiv(m, 64)
    groups = k // group
    if not (tiles < NUM_SMS // 2 or (tiles < NUM_SMS and k >= 2048)) or groups < 2:
        return 1, k
    per = max(_cdiv(groups, _cdiv(GEMM_SPLIT_BLOCKS, tiles)), _cdiv(128, group))
    return _cdiv(groups, per), per * group


def default_gemm(m: int, n: int, k: int, group: int, target=None) -> str:
    """M > 4: tensor cores where they can run (docs/gpu.md, "Prefill (M > 4): tensor cores")."""
    return "tc" if gemm_tc_ok(group, target) else "simt"


def shell_w4a16(m: int, n: int, k: int, group: int, config: str | None = None, target=None
                ) -> tvm.tirx.PrimFunc:
    """The CUDA linear_w4a16 for x [m, k], w [K/2, N] two nibbles a byte, scale [K/g, N]."""
    if n % 8:
        raise ValueError(f"CUDA linear_w4a16 needs N % 8 == 0, got N={n}")

    if m <= GEMV_MAX_M:
        allowed = [c for c in GEMV_CONFIGS if n % int(c.split("_")[0][1:]) == 0]
        cfg = (config or _tuned("w4a16", (m, n, k, group), target, allowed)
               or default_gemv(m, n, k, group))
        vec, unroll, stages, bps = (int(p[1:]) for p in cfg.split("_"))
        if n % vec:
            raise ValueError(f"GEMV config {cfg} needs N % {vec} == 0, got N={n}")
        unroll, gx, gy = _split_k(m, n, k, group, vec, unroll, bps)
        fn = f"lowbit_w4a16_gemv_{m}_v{vec}_u{unroll}_s{stages}"

        @T.prim_func
        def main(x: T.Buffer((m, k), "float32"), w: T.Buffer((k // 2, n), "uint8"),
                 scale: T.Buffer((k // group, n), "float32"), bias: T.Buffer((n,), "float32"),
                 y: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            with T.launch_thread("blockIdx.x", gx), T.launch_thread("blockIdx.y", gy), \
                    T.launch_thread("threadIdx.x", 128):
                T.evaluate(T.call_extern("int32", fn, x.data, w.data, scale.data, bias.data,
                                         y.data, n, k, group))

        return main.with_attr(KERNEL_ATTR, "linear_w4a16").with_attr("lowbit.config", cfg)

    cfg = config or _tuned("w4a16", (m, n, k, group), target, GEMM_CONFIGS) or default_gemm(
        m, n, k, group, target)
    if cfg not in GEMM_CONFIGS:
        raise ValueError(f"int4 GEMM config {cfg} is not one of {GEMM_CONFIGS}")
    gx, gy = _cdiv(n, 64), _cdiv(m, 64)
    if cfg == "simt":
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

        return gemm.with_attr(KERNEL_ATTR, "linear_w4a16").with_attr("lowbit.config", cfg)

    if not gemm_tc_ok(group, target):
        raise ValueError(f"int4 GEMM config {cfg} needs group % 32 == 0 on sm_80+, got g={group}")
    gz, chunk = gemm_split(m, n, k, group) if cfg == "tc" else (1, k)
    tc = "lowbit_w4a16_gemm_tc"
    if gz == 1:
        @T.prim_func
        def gemm(x: T.Buffer((m, k), "float32"), w: T.Buffer((k // 2, n), "uint8"),
                 scale: T.Buffer((k // group, n), "float32"), bias: T.Buffer((n,), "float32"),
                 y: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            with (T.launch_thread("blockIdx.x", gx), T.launch_thread("blockIdx.y", gy),
                  T.launch_thread("threadIdx.x", 128)):
                T.evaluate(T.call_extern("int32", tc, x.data, w.data, scale.data, bias.data,
                                         y.data, m, n, k, group, chunk))
    else:
        init_blocks = _cdiv(m * n, 256)

        @T.prim_func
        def gemm(x: T.Buffer((m, k), "float32"), w: T.Buffer((k // 2, n), "uint8"),
                 scale: T.Buffer((k // group, n), "float32"), bias: T.Buffer((n,), "float32"),
                 y: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            with T.launch_thread("blockIdx.x", init_blocks), T.launch_thread("threadIdx.x", 256):
                T.evaluate(T.call_extern("int32", "lowbit_w4a16_init", bias.data, y.data, m, n))
            with (T.launch_thread("blockIdx.x", gx), T.launch_thread("blockIdx.y", gy),
                  T.launch_thread("blockIdx.z", gz), T.launch_thread("threadIdx.x", 128)):
                T.evaluate(T.call_extern("int32", tc, x.data, w.data, scale.data, bias.data,
                                         y.data, m, n, k, group, chunk))

    return gemm.with_attr(KERNEL_ATTR, "linear_w4a16").with_attr("lowbit.config", cfg)


BCQ_GEMV_MAX_M = 4


def bcq_chunk(m: int, n_pad: int, k: int, cols: int, warps: int = 4) -> int:
    """Inputs per block (KC) of the BCQ GEMV: 512 (256 for K <= 256). H200 sweep (docs/gpu.md,
    M = 1, group 128, 4096x4096 and 8192x28672, q = 3 and 4): 512 is the fastest chunk on
    8192x28672 and within 0.0012 ms of the fastest on 4096x4096; 1024 is 8-40% and 2048 up
    to 2.5x slower (fewer blocks, longer table builds). ``n_pad``, ``cols``, ``warps``: kept
    for choosing by shape later."""
    del n_pad, cols, warps
    return 256 if k <= 256 else min(512, max(256, 3072 // m // 256 * 256))


T256_MAX_M = 2          # 64 KiB of 256-entry tables per row of x


def shell_bcq(m: int, n: int, k: int, q: int, group: int, offset: bool, width: int,
              kc: int | None = None, warps: int | None = None, prefetch: bool = False,
              table: int | None = None) -> tvm.tirx.PrimFunc:
    """The CUDA bcq_linear (kernels/bcq.py layout) for M <= 4: y = bias, then the LUT GEMV.

    ``table`` 256 (the default for M <= 2 on 64-column blocks): ``lowbit_bcq_t256``, 8 warps x
    32 columns and 512 inputs per block, one lookup per plane byte; 16 (the default
    otherwise): ``lowbit_bcq_gemv``, ``kc`` inputs and ``warps`` (4) x 16 or 32 columns per
    block, ``prefetch``: double-buffered plane loads, off by default (136 instead of 78
    registers for q = 3, up to 38% slower on the H200 sweep). H200, M = 1, 8192x28672:
    the 256-entry kernel is 12-16% faster (docs/gpu.md)."""
    if not 1 <= m <= BCQ_GEMV_MAX_M:
        raise ValueError(f"CUDA BCQ GEMV takes M <= {BCQ_GEMV_MAX_M}, got M={m}")
    if k % 8 or group % 8 or k % group or width % 16 or not 1 <= q <= 8:
        raise ValueError(f"CUDA BCQ GEMV needs K % 8 == 0 and g % 8 == 0, got K={k}, g={group}")
    if table is None:
        table = 256 if m <= T256_MAX_M and width % 32 == 0 else 16
    if table not in (16, 256) or (table == 256 and (m > T256_MAX_M or width % 32)):
        raise ValueError(f"BCQ GEMV: table must be 16, or 256 for M <= {T256_MAX_M} on "
                         f"64-column blocks; got {table} for M={m}, W={width}")
    n_pad = _cdiv(n, width) * width
    nb, ng = n_pad // width, k // group
    cols = 32 if width % 32 == 0 else 16
    if table == 256:
        kc, warps = 512, 8
        smem = m * 65536
        fn = f"lowbit_bcq_t256_{m}_q{q}_o{int(offset)}"
        config = "t256_w8"
    else:
        warps = warps or 4
        kc = kc or bcq_chunk(m, n_pad, k, cols, warps)
        if kc % 256 or warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"BCQ GEMV: chunk must be a multiple of 256 and warps a power of "
                             f"two up to 16, got {kc}, {warps}")
        smem = m * (kc // 256) * 4096
        fn = f"lowbit_bcq_gemv_{m}_q{q}_c{cols}_o{int(offset)}_p{int(prefetch)}"
        config = f"c{cols}_kc{kc}_w{warps}_p{int(prefetch)}"
    gx, gy = _cdiv(n_pad, warps * cols), _cdiv(k, kc)
    init_blocks = _cdiv(m * n, 256)
    threads = 32 * warps
    extra = () if table == 256 else (kc,)

    @T.macro
    def body(x, planes, alpha, off, bias, y):
        with T.launch_thread("blockIdx.x", init_blocks), T.launch_thread("threadIdx.x", 256):
            T.evaluate(T.call_extern("int32", "lowbit_w4a16_init", bias.data, y.data, m, n))
        with (T.launch_thread("blockIdx.x", gx), T.launch_thread("blockIdx.y", gy),
              T.launch_thread("threadIdx.x", threads)):
            lut = T.alloc_buffer((smem,), "uint8", scope="shared.dyn")
            T.evaluate(T.call_extern("int32", fn, x.data, planes.data, alpha.data, off.data,
                                     y.data, lut.data, n, n_pad, k, group, width, *extra))

    if offset:
        @T.prim_func
        def main(x_f32: T.Buffer((m, k), "float32"),
                 planes_u8: T.Buffer((nb, k // 8, q, width), "uint8"),
                 alpha_f32: T.Buffer((nb, ng, q, width), "float32"),
                 offset_f32: T.Buffer((nb, ng, width), "float32"),
                 bias_f32: T.Buffer((n,), "float32"), y_f32: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            body(x_f32, planes_u8, alpha_f32, offset_f32, bias_f32, y_f32)
    else:
        @T.prim_func
        def main(x_f32: T.Buffer((m, k), "float32"),
                 planes_u8: T.Buffer((nb, k // 8, q, width), "uint8"),
                 alpha_f32: T.Buffer((nb, ng, q, width), "float32"),
                 bias_f32: T.Buffer((n,), "float32"), y_f32: T.Buffer((m, n), "float32")):
            T.func_attr({"tirx.noalias": True})
            body(x_f32, planes_u8, alpha_f32, x_f32, bias_f32, y_f32)   # offset unused
    return (main.with_attr(KERNEL_ATTR, "bcq_linear")
            .with_attr("lowbit.config", config))


def arg_shapes(func: tvm.tirx.PrimFunc) -> list[list[int]]:
    """The static shapes of a PrimFunc's buffer parameters."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return [[int(d) for d in a.shape] for a in ArgInfo.from_prim_func(func)]


def _u8s8_on_cuda(func: tvm.tirx.PrimFunc, target) -> tvm.s_tir.Schedule:
    """The registry implementation of ``linear_u8s8`` on CUDA: its shell (ValueError for a
    shape the device function cannot take: the kernel then goes to dlight)."""
    shapes = arg_shapes(func)
    (m, k), n = shapes[0], shapes[2][0]
    if wgmma_arch(target) and func.attrs is not None and "lowbit.w_layout" in func.attrs:
        # row-major weight bytes (pipelines/cuda.py rowmajor_u8s8_weights, K % 16 == 0 only)
        return tvm.s_tir.Schedule(shell_u8s8_wgmma(m, n, k, target=target))
    return tvm.s_tir.Schedule(shell_u8s8(m, n, k, target=target))


def _w4a16_on_cuda(func: tvm.tirx.PrimFunc, target) -> tvm.s_tir.Schedule:
    """The registry implementation of ``linear_w4a16`` on CUDA (see ``_u8s8_on_cuda``)."""
    shapes = arg_shapes(func)
    (m, k), (_, n) = shapes[0], shapes[1]
    return tvm.s_tir.Schedule(shell_w4a16(m, n, k, k // shapes[2][0], target=target))


def _bcq_on_cuda(func: tvm.tirx.PrimFunc, target) -> tvm.s_tir.Schedule | None:
    """The registry implementation of ``bcq_linear`` on CUDA: the LUT GEMV for M <= 4 and
    groups of whole plane bytes; None (dlight's rules) otherwise."""
    shapes = arg_shapes(func)
    (m, k), (_, _, q, width), n = shapes[0], shapes[1], shapes[-1][1]
    ng, offset = shapes[2][1], len(shapes) == 6
    group = k // ng
    if m > BCQ_GEMV_MAX_M or group % 8 or k % 8:
        return None
    return tvm.s_tir.Schedule(shell_bcq(m, n, k, q, group, offset, width))


registry.register("linear_u8s8", "cuda", _u8s8_on_cuda)
registry.register("bcq_linear", "cuda", _bcq_on_cuda)
registry.register("linear_w4a16", "cuda", _w4a16_on_cuda)
