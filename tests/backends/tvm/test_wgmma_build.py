"""The sm_90a wgmma int8 GEMM (kernels/cuda_wgmma.cu, issue 20) builds with nvcc, without a GPU:
sm_90 machine code compiled for sm_90a, wgmma / setmaxnreg / TMA in the PTX, no spills, no
stack frame, no ptxas warning that setmaxnreg was ignored or wgmmas serialized, every
configuration of kernels/cuda.py WGMMA_CONFIGS present with its shared memory and the same
default rule (scripts/build_wgmma.py does the build checks; it raises BuildError otherwise). Correctness and
speed need the GPU machine: scripts/gpu_check_wgmma.py."""

import ctypes
import importlib.util
import re
from pathlib import Path

import pytest

from lowbit.backends.tvm.kernels.cuda import WGMMA_CONFIGS, default_wgmma, wgmma_smem

REPO = Path(__file__).resolve().parents[3]


def _build_mod():
    spec = importlib.util.spec_from_file_location("build_wgmma",
                                                  REPO / "scripts" / "build_wgmma.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wgmma_kernel_builds_for_sm90a(tmp_path):
    bw = _build_mod()
    if bw.find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot compile cuda_wgmma.cu here")
    rep = bw.build(tmp_path)       # raises BuildError on spills, wrong arch, missing wgmma
    assert rep["arches"] == ["sm_90"] and rep["built_for_sm_90a"]
    assert rep["ptx_wgmma"] > 0 and rep["ptx_setmaxnreg"] > 0 and rep["ptx_tma"] > 0
    assert len(rep["kernels"]) >= 2
    # one kernel per tile shape and ring depth (the persistent "_p" configurations reuse them)
    shapes = {tuple(v[:3]) for v in WGMMA_CONFIGS.values()}
    assert len(rep["kernels"]) == len(shapes)
    for k in rep["kernels"]:
        assert k["spill_stores"] == k["spill_loads"] == k["stack"] == 0, k
        # exactly the launch-bounds cap the setmaxnreg split is computed from: 168 for
        # 384 threads x 1 CTA per SM (BM = 128), 128 for 256 threads x 2 (BM = 64)
        bm = int(re.search(r"kernelILi(\d+)E", k["kernel"]).group(1))
        assert k["registers"] == {128: 168, 64: 128}[bm], k
    # the host entry points exist (host-only queries; no CUDA call, fine without a GPU) and
    # agree with kernels/cuda.py (names, shared memory, the default rule)
    cfgs = rep["configs"]
    assert [c["name"] for c in cfgs] == list(WGMMA_CONFIGS)
    for c in cfgs:
        bm, bn, stages, _ = WGMMA_CONFIGS[c["name"]]
        assert c["dynamic_smem"] == wgmma_smem(bm, bn, stages) <= 227 * 1024, c
    lib = ctypes.CDLL(rep["binary"])
    lib.lowbit_wgmma_config_name.restype = ctypes.c_char_p
    for m in (1, 128, 1000, 1024, 4096, 9000):
        for n, k in ((64, 64), (384, 384), (768, 3072), (1536, 384), (3072, 768), (4096, 4096)):
            got = lib.lowbit_wgmma_config_name(lib.lowbit_wgmma_default_config(m, n, k))
            assert got.decode() == default_wgmma(m, n, k), (m, n, k)


def test_elf_arch_reader():
    bw = _build_mod()
    head = bytearray(64)
    head[0:7] = b"\x7fELF\x02\x01\x01"
    head[18:20] = (190).to_bytes(2, "little")
    head[48:52] = (0x06005A04).to_bytes(4, "little")      # what nvcc 13 writes for sm_90(a)
    assert bw.elf_cuda_arches(b"junk" + bytes(head) + b"tail") == ["sm_90"]
    head[18:20] = (62).to_bytes(2, "little")             # x86-64: not a cubin
    assert bw.elf_cuda_arches(bytes(head)) == []


def test_gpu_check_harness_dry_run(tmp_path):
    """scripts/gpu_check_wgmma.py's plumbing (workers, NaN-poisoned checks, both timings, the
    report) on the CPU with its numpy stand-in library; says nothing about the kernel."""
    import json
    import subprocess
    import sys

    out = tmp_path / "dry.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check_wgmma.py"), "--dry-run",
                        "--json", str(out)], check=False, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["checks"] and all(c["ok"] for c in res["checks"])
    assert res["timing"] and all(t["best_config"] in res["configs"] for t in res["timing"])
    assert all(t["ratio_default"] is not None for t in res["timing"])
