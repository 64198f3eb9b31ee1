"""The CUDA ``bcq_linear`` (kernels/cuda.py ``shell_bcq``, the LUT GEMV of cuda_kernels.cu) on
a machine without a GPU: the launch shell keeps the kernel's signature, the registry takes it
for decode shapes (M <= 4, groups of whole plane bytes) and declines the rest (dlight), and a
tiny BERT quantized with W3_BCQ compiles for sm_90 with the device function in its cubin.
Numerics and speed on a GPU: scripts/gpu_check_bcq.py (docs/gpu.md)."""

import os
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel

import lowbit
from lowbit.backends.tvm.kernels import registry
from lowbit.backends.tvm.kernels.bcq import bcq_linear, block_width
from lowbit.backends.tvm.kernels.cuda import CALLED, arg_shapes, bcq_chunk, shell_bcq
from lowbit.backends.tvm.pipelines.cuda import fatbin_arches
from lowbit.backends.tvm.target import resolve_target

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


@pytest.mark.parametrize("m, n, k, q, group, offset", [
    (1, 4096, 4096, 3, 128, False), (4, 100, 256, 2, 32, True), (3, 384, 1536, 4, 1536, False),
    (2, 1000, 512, 1, 8, True)])
def test_shell_keeps_kernel_signature(m, n, k, q, group, offset):
    want = arg_shapes(bcq_linear(m, n, k, q, group, offset))
    shell = shell_bcq(m, n, k, q, group, offset, block_width(n))
    assert arg_shapes(shell) == want
    assert str(shell.attrs["lowbit.kernel"]) == "bcq_linear"
    kernel = "t256" if m <= 2 and block_width(n) % 32 == 0 else "gemv"
    assert f"lowbit_bcq_{kernel}_{m}_q{q}_" in shell.script()


def test_registry_takes_decode_shapes_only():
    tgt = resolve_target("cuda")
    sch = registry.default_schedule(bcq_linear(1, 256, 512, 3, 128, False), tgt)
    assert sch is not None and "lowbit_bcq_t256_1_q3_o0" in sch.mod["main"].script()
    sch = registry.default_schedule(bcq_linear(3, 256, 512, 3, 128, False), tgt)
    assert "lowbit_bcq_gemv_3_q3_c32_o0" in sch.mod["main"].script()      # M > 2: 16 entries
    sch = registry.default_schedule(bcq_linear(4, 100, 256, 2, 256, True), tgt)
    assert "lowbit_bcq_gemv_4_q2_c16_o1" in sch.mod["main"].script()       # W = 16
    assert registry.default_schedule(bcq_linear(5, 256, 512, 3, 128, False), tgt) is None
    assert registry.default_schedule(bcq_linear(1, 256, 512, 3, 4, False), tgt) is None


def test_shell_options_and_bad_shapes():
    assert shell_bcq(1, 8192, 28672, 3, 128, False, 64).attrs["lowbit.config"] == \
        "t256_w8"                                # the H200 sweep's best (docs/gpu.md)
    assert shell_bcq(1, 8192, 28672, 3, 128, False, 64, table=16).attrs["lowbit.config"] == \
        "c32_kc512_w4_p0"
    assert shell_bcq(2, 100, 256, 3, 128, False, 16).attrs["lowbit.config"].startswith("c16")
    assert bcq_chunk(1, 64, 256, 16) == 256
    f = shell_bcq(1, 256, 512, 3, 128, False, 64, kc=1024, warps=8, prefetch=True, table=16)
    assert f.attrs["lowbit.config"] == "c32_kc1024_w8_p1"
    assert "lowbit_bcq_gemv_1_q3_c32_o0_p1" in f.script()
    with pytest.raises(ValueError, match="M <= 4"):
        shell_bcq(5, 256, 512, 3, 128, False, 64)
    with pytest.raises(ValueError, match="g % 8"):
        shell_bcq(1, 256, 512, 3, 4, False, 64)
    with pytest.raises(ValueError, match="multiple of 256"):
        shell_bcq(1, 256, 512, 3, 128, False, 64, kc=300, table=16)
    with pytest.raises(ValueError, match="table must be 16, or 256"):
        shell_bcq(3, 256, 512, 3, 128, False, 64, table=256)
    with pytest.raises(ValueError, match="table must be 16, or 256"):
        shell_bcq(1, 100, 512, 3, 128, False, 16, table=256)


@needs_nvcc
def test_bert_w3_bcq_compiles_for_sm90(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=256, vocab_size=100)
    ids = torch.randint(0, 100, (1, 4))                    # M = 4 rows: the decode GEMV
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    q = lowbit.quantize(lowbit.capture(BertModel(cfg).eval(), batch), lowbit.recipes.W3_BCQ,
                        calibration=[batch], progress=False)
    CALLED.clear()
    mod = lowbit.compile(q, target="cuda", progress=False)     # no GPU here: nothing runs
    # hidden 128 (N < 256: 16-column blocks), FFN 256 (64-column blocks); no offset in W3_BCQ
    assert {c for c in CALLED if c.startswith("lowbit_bcq_gemv_")} == {
        "lowbit_bcq_gemv_4_q3_c16_o0_p0", "lowbit_bcq_gemv_4_q3_c32_o0_p0"}, CALLED
    folder = mod.save(tmp_path / "m")
    assert sorted(os.listdir(folder)) == ["meta.json", "model.so", "params.bin"]
    assert fatbin_arches(folder / "model.so") == ["sm_90"]
    lib = (folder / "model.so").read_bytes()
    assert b"lowbit_bcq_gemv_4_q3_c32_o0_p0" in lib                 # in the sm_90 cubin
    assert b"__global__" not in lib


@needs_nvcc
def test_t256_kernel_builds_with_launch_bounds():
    """The 256-entry GEMV compiles for sm_90 inside TVM's kernel, whose launch bounds (both the
    declaration and the definition) ask for 3 blocks per SM; the y = bias kernel keeps TVM's."""
    import re

    from lowbit.backends.tvm.pipelines.cuda import build_kernel
    from lowbit.backends.tvm.target import cuda_target

    CALLED.clear()
    mod = build_kernel(shell_bcq(2, 512, 1024, 3, 128, True, 64), cuda_target())
    src = mod.mod.imports[0].inspect_source("cuda")
    assert "lowbit_bcq_t256_2_q3_o1" in CALLED
    bounds = re.findall(r"__launch_bounds__\(([^)]*)\) (\w+)\(", src)
    assert sorted(set(bounds)) == [("256", "main_kernel"), ("256, 3", "main_kernel_1")], bounds
    assert src.count("__launch_bounds__(256, 3) main_kernel_1(") == 2
