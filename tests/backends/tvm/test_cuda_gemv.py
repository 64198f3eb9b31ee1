"""The CUDA int4 weight-only GEMV (kernels/cuda.py ``shell_w4a16`` for M <= 4, the
``lowbit_w4a16_gemv`` device function of cuda_kernels.cu; issue 20, item 2) without a GPU.

- Structure: one launch per call (no ``y = bias`` kernel before the GEMV: the first split-K
  block of a column tile stores bias + its sum), the kernel's signature kept, the split-K grid
  within its bounds (blocks per SM, x staged in GEMV_XS floats, no block without rows).
- Arithmetic: the kernel's decoding (one PRMT builds the float 0.5 + q/32 from a nibble; per
  group 32 * part - 24 * sum(x) = sum x (q - 8)) emulated in numpy float32 against float64.
- Build: every configuration of GEMV_CONFIGS, M = 1..4, compiles with nvcc into an sm_90 cubin
  (and one for sm_80). Numerics and speed on the GPU: scripts/gpu_check_gemv.py (docs/gpu.md).
"""

import math
import re
import shutil

import numpy as np
import pytest

from lowbit.backends.tvm.kernels.cuda import (
    GEMV_CONFIGS,
    GEMV_XS,
    NUM_SMS,
    _split_k,
    arg_shapes,
    default_gemv,
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
