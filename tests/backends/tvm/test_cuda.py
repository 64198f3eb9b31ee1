"""CUDA target on a machine without a GPU: the target resolves, a quantized tiny BERT compiles
for sm_90 with lowbit's integer kernels, the saved library holds sm_90 machine code (a cubin,
not CUDA source) and the weights sit beside it in params.bin. Numerics on a GPU:
scripts/gpu_check.py (docs/gpu.md)."""

import json
import os
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel

from lowbit import recipes
from lowbit.backends.tvm.pipelines.cuda import fatbin_arches
from lowbit.backends.tvm.kernels.cuda import (
    CALLED,
    CONFIG_TABLE,
    U8S8_CONFIGS,
    arg_shapes,
    config_key,
    default_u8s8,
    kernel_configs,
    shell_u8s8,
    shell_w4a16,
)
from lowbit.backends.tvm.runtime import target_kind
from lowbit.backends.tvm.schedules.base import LowbitKernel
from lowbit.backends.tvm.target import resolve_target
from lowbit.capture import capture
from lowbit.compiler import compile
from lowbit.errors import ConfigError
from lowbit.quantize import quantize

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


def test_resolve_cuda_targets():
    t = resolve_target("cuda")
    assert t.kind.name == "cuda" and str(t.attrs["arch"]) == "sm_90"
    assert t.host is not None and t.host.kind.name == "llvm"
    assert "mcpu" not in t.host.attrs          # generic host code: runs on any x86-64
    assert str(resolve_target({"kind": "cuda", "arch": "sm_80"}).attrs["arch"]) == "sm_80"
    assert str(resolve_target({"kind": "cuda"}).attrs["arch"]) == "sm_90"
    with pytest.raises(ConfigError, match="sm_90"):
        resolve_target({"kind": "cuda", "arch": "90"})


def test_shells_keep_kernel_signatures():
    f = shell_u8s8(100, 200, 64)
    assert arg_shapes(f) == [[100, 64], [13, 16, 16, 4], [200], [200], [200], [100, 200]]
    g = shell_w4a16(1, 256, 512, 128)
    assert arg_shapes(g) == [[1, 512], [256, 256], [4, 256], [256], [1, 256]]
    with pytest.raises(ValueError, match="K % 16"):
        shell_u8s8(4, 16, 36)


def test_rule_replaces_kernels_with_shells():
    from lowbit.backends.tvm import kernels

    tgt = resolve_target("cuda")
    for func in (kernels.linear_u8s8(100, 200, 64), kernels.linear_w4a16(1, 256, 512, 128)):
        sch = LowbitKernel().apply(func, tgt, False)   # unguarded: errors surface here
        assert sch is not None and "call_extern" in sch.mod["main"].script() or \
            "lowbit_" in sch.mod["main"].script()


def test_kernel_config_table():
    tgt = resolve_target("cuda")
    shape = (4096, 768, 3072)
    assert shell_u8s8(*shape).attrs["lowbit.config"] == default_u8s8(*shape)
    key = config_key("u8s8", shape, tgt)
    assert key == "u8s8|4096,768,3072|sm_90"
    with kernel_configs({key: {"config": "128x256_2x4_s3"}}):
        assert shell_u8s8(*shape, target=tgt).attrs["lowbit.config"] == "128x256_2x4_s3"
        assert (shell_u8s8(128, 768, 3072, target=tgt).attrs["lowbit.config"]
                == default_u8s8(128, 768, 3072))     # no record for this shape
    with kernel_configs({key: {"config": "not-a-config"}}):   # unknown names are ignored
        assert shell_u8s8(*shape, target=tgt).attrs["lowbit.config"] == default_u8s8(*shape)
    for cfg in U8S8_CONFIGS:     # every candidate keeps the kernel's signature
        assert arg_shapes(shell_u8s8(100, 200, 64, config=cfg))[1] == [13, 16, 16, 4]
    g = shell_w4a16(1, 8192, 8192, 128, config="v16_u8_s2_b4")
    assert g.attrs["lowbit.config"] == "v16_u8_s2_b4"
    with pytest.raises(ValueError, match="N % 16"):
        shell_w4a16(1, 264, 512, 128, config="v16_u8_s2_b4")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=256, vocab_size=100)
    ids = torch.randint(0, 100, (1, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return capture(BertModel(cfg).eval(), inputs), inputs


@needs_nvcc
@pytest.mark.parametrize("recipe, kernel", [(recipes.W8A8, "linear_u8s8"),
                                            (recipes.W4A16_G128, "linear_w4a16")])
def test_compile_for_sm90(tiny, tmp_path, recipe, kernel):
    gm, inputs = tiny
    q = quantize(gm, recipe, calibration=[inputs], progress=False)
    CALLED.clear()
    mod = compile(q, target="cuda", progress=False)     # no GPU here: nothing runs
    prefix = {"linear_u8s8": "lowbit_gemm_u8s8_", "linear_w4a16": "lowbit_w4a16_"}[kernel]
    assert any(c.startswith(prefix) for c in CALLED), CALLED   # lowbit's device kernels
    kinds = [k for _, k in mod.meta["lowering"]]
    assert kinds.count(kernel) == 6
    assert target_kind(mod.meta) == "cuda"
    folder = mod.save(tmp_path / "m")
    assert sorted(os.listdir(folder)) == ["meta.json", "model.so", "params.bin"]
    lib = (folder / "model.so").read_bytes()
    assert fatbin_arches(folder / "model.so") == ["sm_90"]        # machine code, not source
    assert b"__global__" not in lib and b"extern \"C\"" not in lib
    assert f"lowbit_{kernel}".encode() in lib
    # weights beside the library, not in it: params.bin holds the weights, model.so is small
    n_weights = sum(p.numel() for p in q.parameters()) + sum(b.numel() for b in q.buffers())
    assert os.path.getsize(folder / "params.bin") > n_weights * 0.5
    assert os.path.getsize(folder / "model.so") < 2 * 2**20
    meta = json.loads((folder / "meta.json").read_text())
    assert json.loads(meta["target"])["arch"] == "sm_90"


@needs_nvcc
def test_other_arch(tiny, tmp_path):
    gm, _ = tiny
    mod = compile(gm, target={"kind": "cuda", "arch": "sm_80"}, progress=False)
    assert fatbin_arches(mod.save(tmp_path / "m") / "model.so") == ["sm_80"]


@needs_nvcc
def test_compile_reads_tuned_configs(tiny, tmp_path):
    """compile(..., tune=Tune(trials=0, db=folder)) on CUDA builds each int8 kernel with the
    configuration recorded in <folder>/cuda_kernels.json (scripts/gpu_tune.py record)."""
    from lowbit.backends.tvm.tune import Tune

    gm, inputs = tiny
    q = quantize(gm, recipes.W8A8, calibration=[inputs], progress=False)
    tgt = resolve_target("cuda")
    cfg = "64x128_2x2_s3_k128"
    table = {config_key("u8s8", s, tgt): {"config": cfg}
             for s in ((16, 128, 128), (16, 256, 128), (16, 128, 256))}
    (tmp_path / CONFIG_TABLE).write_text(json.dumps(table))
    CALLED.clear()
    compile(q, target="cuda", tune=Tune(trials=0, db=str(tmp_path)), progress=False)
    assert f"lowbit_gemm_u8s8_{cfg}" in CALLED, CALLED
    assert not any(c.startswith("lowbit_gemm_u8s8_") and c != f"lowbit_gemm_u8s8_{cfg}"
                   for c in CALLED), CALLED
