"""The CUDA int4 weight-only GEMV (kernels/cuda.py ``shell_w4a16`` for M <= 4, the
``lowbit_w4a16_gemv`` device function of cuda_kernels.cu; issue 20, item 2) without a GPU.

- Structure: one launch per call (no ``y = bias`` kernel before the GEMV: the first split-K
  block of a column tile stores bias + its sum), the kernel's signature kept, the split-K grid
  within its bounds (blocks per SM, x staged in GEMV_XS floats, no block without rows).
- Arithmetic: the kernel's decoding (one PRMT builds the float 0.5 + q/32 from a nibble; per
  group 32 * part - 24 * sum(x) = sum x (q - 8)) emulated in numpy float32 against float64.
- Build: every configuration of GEMV_CONFIGS, M = 1..4, compiles with nvcc into an sm_90 cubin
  (and one for sm_80). Numerics and speed on the GPU: scripts/gpu_check_gemv.py (docs/gpu.md).
- Prefill (M > 4): the shell picks the tensor-core GEMM ("tc", split-K by gemm_split, a y = bias
  launch first when split) for g % 32 == 0 on sm_80+, else the SIMT GEMM ("simt"); its fp16
  numerics (x rounded to fp16, exact q - 8, fp32 sums scaled per group) emulated in numpy
  against float64 within the bound the GPU check uses; both build for sm_90 and sm_80 with no
  spills (nvcc -Xptxas -v).
"""

import math
import re
import shutil

import numpy as np
import pytest

from lowbit.backends.tvm.kernels.cuda import (
    GEMM_CONFIGS,
    GEMM_SPLIT_BLOCKS,
    GEMV_CONFIGS,
    GEMV_XS,
    NUM_SMS,
    _split_k,
    arg_shapes,
    default_gemm,
    default_gemv,
    gemm_split,
    shell_w4a16,
)

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")

SHAPES = [(1, 768, 768, 128), (1, 4096, 4096, 128), (1, 28672, 8192, 128), (1, 8192, 28672, 128),
          (2, 264, 512, 128), (3, 1000, 768, 32), (4, 4104, 1024, 128), (4, 8192, 8192, 32),
          (1, 512, 1024, 1024), (1, 776, 96, 32)]


def _valid(cfg, n):
    return n % int(cfg.split("_")[0][1:]) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_one_launch_no_init_kernel(shape):
    m, n, k, g = shape
    for cfg in [c for c in GEMV_CONFIGS if _valid(c, n)]:
        f = shell_w4a16(m, n, k, g, config=cfg)
        script = f.script()
        assert "lowbit_w4a16_init" not in script
        assert script.count('launch_thread("blockIdx.x"') == 1, script
        calls = re.findall(r"lowbit_w4a16_gemv_(\d)_v(\d+)_u(\d+)_s(\d+)", script)
        assert len(calls) == 1 and int(calls[0][0]) == m
        assert arg_shapes(f) == [[m, k], [k // 2, n], [k // g, n], [n], [m, n]]
        assert f.attrs["lowbit.config"] == cfg


@pytest.mark.parametrize("shape", SHAPES)
def test_split_k_grid(shape):
    m, n, k, g = shape
    for cfg in [c for c in GEMV_CONFIGS if _valid(c, n)]:
        vec, unroll, _, bps = (int(p[1:]) for p in cfg.split("_"))
        u, gx, gy = _split_k(m, n, k, g, vec, unroll, bps)
        batches = (k // 2) // u
        assert (g // 2) % u == 0 and u % 2 == 0 and u <= unroll
        assert gx == math.ceil(n / (32 * vec)) and 1 <= gy <= batches
        assert m * 2 * u * math.ceil(batches / gy) <= GEMV_XS          # x fits shared memory
        x_cap = math.ceil(m * k / (GEMV_XS - 2 * u * m))
        if bps == 0:
            assert gy == max(1, x_cap)
        elif gy > x_cap:                                                 # one wave of <= b
            assert math.ceil(gx * gy / NUM_SMS) <= bps


def test_split_k_balances_the_busiest_sm():
    # 32 tiles x 17 blocks would put 5 blocks on some SMs and 4 on most: 16 per tile instead
    assert _split_k(1, 16384, 8192, 128, 16, 8, 4) == (8, 32, 16)
    assert _split_k(1, 8192, 28672, 128, 16, 8, 4) == (8, 16, 33)      # 528 = 4 x 132
    assert _split_k(1, 768, 768, 128, 8, 4, 0)[2] == 1                  # b0: no split
    with pytest.raises(ValueError, match="group % 4"):
        _split_k(1, 256, 60, 30, 8, 4, 4)


def test_default_gemv():
    for m in (1, 2, 3, 4):
        for n, k, g in ((768, 768, 128), (4096, 4096, 32), (264, 512, 128), (8192, 28672, 128),
                        (28672, 8192, 128)):
            cfg = default_gemv(m, n, k, g)
            assert cfg in GEMV_CONFIGS and _valid(cfg, n)
            assert shell_w4a16(m, n, k, g).attrs["lowbit.config"] == cfg
    assert default_gemv(1, 8192, 28672, 128) == "v16_u8_s2_b4"     # the H200 sweep
    assert default_gemv(1, 4096, 4096, 128) == "v8_u8_s4_b4"


# ---- the kernel's arithmetic, emulated in numpy ---------------------------------------------
def _q32(q: np.ndarray) -> np.ndarray:
    """What ``lowbit_q32(lo, sel)`` returns for the nibble q: __byte_perm puts the byte q << 3
    in byte 2 under 0x3F (byte 3), zeros below."""
    bits = (np.uint32(0x3F) << np.uint32(24)) | ((q.astype(np.uint32) << np.uint32(3))
                                                 << np.uint32(16))
    return bits.view(np.float32)


def test_nibble_float_is_half_plus_q_over_32():
    q = np.arange(16, dtype=np.uint32)
    np.testing.assert_array_equal(_q32(q), (0.5 + q / 32).astype(np.float32))
    # the masks of the kernel: lo nibbles (v << 3) & 0x78..., hi nibbles (v >> 1) & 0x78...
    v = np.array([0x9A3F07C1], dtype=np.uint32)
    lo = ((v << np.uint32(3)) & np.uint32(0x78787878)).view(np.uint8)
    hi = ((v >> np.uint32(1)) & np.uint32(0x78787878)).view(np.uint8)
    b = v.view(np.uint8)
    np.testing.assert_array_equal(lo >> 3, b & 15)
    np.testing.assert_array_equal(hi >> 3, b >> 4)


def _emulate(x, w, scale, bias, rows_per_batch=8):
    """One thread's float32 arithmetic per column, batches of rows, groups as in the kernel:
    part += x * (0.5 + q/32), sx += x, acc += (32 part - 24 sx) * scale at each group end."""
    m, k = x.shape
    g = k // scale.shape[0]
    lo, hi = _q32(w & 15), _q32(w >> 4)                              # [K/2, N]
    acc = np.zeros((m, w.shape[1]), np.float32)
    for gi in range(scale.shape[0]):
        part = np.zeros_like(acc)
        sx = np.zeros((m, 1), np.float32)
        for r in range(gi * g // 2, (gi + 1) * g // 2):
            x0, x1 = x[:, 2 * r:2 * r + 1], x[:, 2 * r + 1:2 * r + 2]
            sx = sx + x0 + x1
            part = part + x0 * lo[r]
            part = part + x1 * hi[r]
        acc = acc + (np.float32(32) * part - np.float32(24) * sx) * scale[gi]
    return acc + bias


def _reference(x, w, scale, bias):
    wk = np.stack([(w & 15).astype(np.float64) - 8, (w >> 4).astype(np.float64) - 8], 1)
    wk = wk.reshape(-1, w.shape[1]) * np.repeat(scale.astype(np.float64), x.shape[1]
                                                // scale.shape[0], 0)
    return x.astype(np.float64) @ wk + bias


@pytest.mark.parametrize("m, n, k, g, mean", [(1, 64, 512, 128, 0.0), (3, 40, 256, 32, 0.0),
                                              (2, 48, 1024, 1024, 0.0), (4, 32, 512, 128, 3.0)])
def test_emulated_kernel_arithmetic(m, n, k, g, mean):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((m, k)) + mean).astype(np.float32)   # mean 3: sum(x) >> result
    w = rng.integers(0, 256, (k // 2, n), dtype=np.uint8)
    scale = (rng.random((k // g, n)) * 0.02 + 0.001).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got, ref = _emulate(x, w, scale, bias), _reference(x, w, scale, bias)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 1e-5, err                 # gpu_check_gemv.py's bound; 2e-7 - 1.8e-6 on the H200


# ---- nvcc build ------------------------------------------------------------------------------
def _build(funcs, arch):
    import tvm

    from lowbit.backends.tvm.cuda_env import load_cuda_backend
    from lowbit.backends.tvm.kernels.cuda import CALLED, cuda_source_hook
    from lowbit.backends.tvm.pipelines.cuda import _env
    from lowbit.backends.tvm.target import resolve_target

    load_cuda_backend(allow_stub=True)
    tgt = resolve_target({"kind": "cuda", "arch": arch})
    CALLED.clear()
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), tgt:
        return tvm.compile(mod, tgt), set(CALLED)


@needs_nvcc
def test_every_configuration_builds_for_sm90(tmp_path):
    from lowbit.backends.tvm.pipelines.cuda import fatbin_arches

    funcs = {}
    for i, cfg in enumerate(GEMV_CONFIGS):
        funcs[f"c{i}"] = shell_w4a16(1, 4096, 1024, 128, config=cfg)
    for m in (2, 3, 4):
        funcs[f"m{m}"] = shell_w4a16(m, 4104, 1024, 32)
    lib, called = _build(funcs, "sm_90")
    want = {re.search(r"lowbit_w4a16_gemv_\d_v\d+_u\d+_s\d+", f.script()).group(0)
            for f in funcs.values()}
    assert want <= called, want - called
    lib.export_library(str(tmp_path / "gemv.so"))
    assert fatbin_arches(tmp_path / "gemv.so") == ["sm_90"]
    data = (tmp_path / "gemv.so").read_bytes()
    assert b"lowbit_gemv_sem" in data                    # the split-K counters, in the cubin
    assert b"lowbit_w4a16_init" not in data


@needs_nvcc
def test_builds_for_sm80(tmp_path):
    from lowbit.backends.tvm.pipelines.cuda import fatbin_arches

    lib, _ = _build({"a": shell_w4a16(1, 4096, 4096, 128),
                          "b": shell_w4a16(4, 264, 512, 32)}, "sm_80")
    lib.export_library(str(tmp_path / "gemv.so"))
    assert fatbin_arches(tmp_path / "gemv.so") == ["sm_80"]


# ---- prefill (M > 4): tensor cores --------------------------------------------------------------
PREFILL = [(5, 264, 512, 32), (16, 768, 768, 128), (16, 4096, 4096, 128), (37, 776, 768, 128),
           (128, 768, 3072, 32), (1000, 4096, 4096, 128), (4096, 4096, 4096, 128),
           (1000, 72, 4096, 128)]


def _target(arch):
    from lowbit.backends.tvm.target import resolve_target

    return resolve_target({"kind": "cuda", "arch": arch})


def test_selection_by_m():
    for m in range(1, 5):
        assert "lowbit_w4a16_gemv_" in shell_w4a16(m, 768, 768, 128).script()
    for m in (5, 16, 1000):
        f = shell_w4a16(m, 768, 768, 128)
        assert f.attrs["lowbit.config"] == "tc"
        assert "lowbit_w4a16_gemm_tc" in f.script()
    assert default_gemm(16, 768, 768, 128, _target("sm_90")) == "tc"
    assert default_gemm(16, 768, 768, 128, _target("sm_80")) == "tc"
    assert default_gemm(16, 768, 768, 128, _target("sm_75")) == "simt"
    assert default_gemm(16, 768, 768, 16) == "simt"          # group not a multiple of 32
    f = shell_w4a16(16, 768, 768, 16)
    assert f.attrs["lowbit.config"] == "simt" and '"lowbit_w4a16_gemm"' in f.script()
    with pytest.raises(ValueError, match="group % 32"):
        shell_w4a16(16, 768, 768, 16, config="tc")
    with pytest.raises(ValueError, match="not one of"):
        shell_w4a16(16, 768, 768, 128, config="wmma")


@pytest.mark.parametrize("shape", PREFILL)
def test_prefill_shells(shape):
    m, n, k, g = shape
    for cfg in GEMM_CONFIGS:
        f = shell_w4a16(m, n, k, g, config=cfg)
        script = f.script()
        assert f.attrs["lowbit.config"] == cfg
        assert arg_shapes(f) == [[m, k], [k // 2, n], [k // g, n], [n], [m, n]]
        gz, chunk = gemm_split(m, n, k, g) if cfg == "tc" else (1, k)
        assert ("lowbit_w4a16_init" in script) == (gz > 1)
        if cfg != "simt":
            assert '"lowbit_w4a16_gemm_tc"' in script
            assert script.rstrip().endswith(f"{m}, {n}, {k}, {g}, {chunk})"), script[-200:]
            assert ('launch_thread("blockIdx.z", ' + str(gz)) in script or gz == 1


@pytest.mark.parametrize("shape", PREFILL)
def test_gemm_split_covers_k_in_whole_groups(shape):
    m, n, k, g = shape
    gz, chunk = gemm_split(m, n, k, g)
    assert chunk % g == 0 and chunk >= min(k, 128)
    assert (gz - 1) * chunk < k <= gz * chunk             # no empty split, all of K covered
    tiles = math.ceil(n / 64) * math.ceil(m / 64)
    assert gz == 1 or tiles < GEMM_SPLIT_BLOCKS


def test_gemm_split_rule_h200_table():
    """Split where the H200 run measured the split faster than one block per tile."""
    split = {(16, 768, 768), (16, 3072, 768), (16, 768, 3072), (16, 4096, 4096), (128, 768, 768),
             (128, 768, 3072), (128, 4096, 4096)}
    for m in (16, 128, 1000, 4096):
        for n, k in ((768, 768), (3072, 768), (768, 3072), (4096, 4096)):
            assert (gemm_split(m, n, k, 128)[0] > 1) == ((m, n, k) in split), (m, n, k)


def _emulate_tc(x, q, s, bias, g):
    """The tensor-core kernel's arithmetic: x rounded to fp16, (q - 8) exact in fp16, products
    summed in fp32 per group (here exactly, as float64 then float32: the fp32 mma sums add a
    little more), the group sum times the fp32 scale added to an fp32 accumulator."""
    xh = x.astype(np.float16).astype(np.float64)
    k = x.shape[1]
    acc = np.zeros((x.shape[0], q.shape[1]), np.float32)
    for g0 in range(0, k, g):
        part = (xh[:, g0:g0 + g] @ (q[g0:g0 + g] - 8.0)).astype(np.float32)
        acc += part * s[g0 // g]
    return acc + bias


@pytest.mark.parametrize(("m", "n", "k", "g"), [(16, 64, 768, 32), (8, 96, 3072, 128)])
def test_emulated_tc_numerics_within_bound(m, n, k, g):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "scripts" / "gpu_check_gemv.py"
    spec = importlib.util.spec_from_file_location("gpu_check_gemv", path)
    gcg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gcg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q = rng.integers(0, 16, (k, n)).astype(np.float64)
    s = (rng.random((k // g, n)) * 0.02 + 0.001).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    ref = x.astype(np.float64) @ ((q - 8) * np.repeat(s.astype(np.float64), g, 0)) + bias
    y = _emulate_tc(x, q, s, bias, g)
    err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert 1e-5 < err < gcg.TC_BOUND / 4, err    # fp16 x: ~2e-4 (H200: 1.6e-4 .. 2.0e-4)


def _ptxas(tmp_path, arch):
    import subprocess

    from lowbit.backends.tvm.kernels.cuda import CUDA_SOURCE

    src = tmp_path / "tc.cu"
    src.write_text(f'#include "{CUDA_SOURCE}"\n'
                   'extern "C" __global__ void __launch_bounds__(128) tc(const float* x, '
                   "const unsigned char* w, const float* s, const float* b, float* y, int M, "
                   "int N, int K, int g, int kc) { lowbit_w4a16_gemm_tc(x, w, s, b, y, M, N, K, "
                   "g, kc); }\n"
                   'extern "C" __global__ void __launch_bounds__(256) simt(const float* x, '
                   "const unsigned char* w, const float* s, const float* b, float* y, int M, "
                   "int N, int K, int g) { lowbit_w4a16_gemm(x, w, s, b, y, M, N, K, g); }\n")
    out = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", str(src),
                          "-o", str(tmp_path / "tc.cubin")], capture_output=True, text=True,
                         check=True)
    return out.stderr


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_prefill_kernels_build_without_spills(tmp_path, arch):
    log = _ptxas(tmp_path, arch)
    for fn in ("tc", "simt"):
        block = log.split(f"Compiling entry function '{fn}'")[1].split("Compiling entry")[0]
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in block, block


@needs_nvcc
def test_prefill_shells_build_for_sm90_and_sm80(tmp_path):
    from lowbit.backends.tvm.pipelines.cuda import fatbin_arches

    for arch in ("sm_90", "sm_80"):
        funcs = {f"{cfg}{i}": shell_w4a16(*s, config=cfg, target=_target(arch))
                 for cfg in GEMM_CONFIGS for i, s in enumerate([(16, 768, 768, 128),
                                                                (37, 776, 768, 32)])}
        lib, called = _build(funcs, arch)
        assert {"lowbit_w4a16_gemm_tc", "lowbit_w4a16_gemm"} <= called, called
        lib.export_library(str(tmp_path / f"{arch}.so"))
        assert fatbin_arches(tmp_path / f"{arch}.so") == [arch]
