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
    assert f"lowbit_bcq_gemv_{m}_q{q}_" in shell.script()


def test_registry_takes_decode_shapes_only():
    tgt = resolve_target("cuda")
    sch = registry.default_schedule(bcq_linear(1, 256, 512, 3, 128, False), tgt)
    assert sch is not None and "lowbit_bcq_gemv_1_q3_c32_o0" in sch.mod["main"].script()
    sch = registry.default_schedule(bcq_linear(4, 100, 256, 2, 256, True), tgt)
    assert "lowbit_bcq_gemv_4_q2_c16_o1" in sch.mod["main"].script()       # W = 16
    assert registry.default_schedule(bcq_linear(5, 256, 512, 3, 128, False), tgt) is None
    assert registry.default_schedule(bcq_linear(1, 256, 512, 3, 4, False), tgt) is None


def test_shell_options_and_bad_shapes():
    assert shell_bcq(1, 8192, 28672, 3, 128, False, 64).attrs["lowbit.config"] == \
        "c32_kc512_w4_p0"                        # the H200 sweep's best (docs/gpu.md)
    assert bcq_chunk(1, 64, 256, 16) == 256
    f = shell_bcq(1, 256, 512, 3, 128, False, 64, kc=1024, warps=8, prefetch=True)
    assert f.attrs["lowbit.config"] == "c32_kc1024_w8_p1"
    assert "lowbit_bcq_gemv_1_q3_c32_o0_p1" in f.script()
    with pytest.raises(ValueError, match="M <= 4"):
        shell_bcq(5, 256, 512, 3, 128, False, 64)
    with pytest.raises(ValueError, match="g % 8"):
        shell_bcq(1, 256, 512, 3, 4, False, 64)
    with pytest.raises(ValueError, match="multiple of 256"):
        shell_bcq(1, 256, 512, 3, 128, False, 64, kc=300)


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
