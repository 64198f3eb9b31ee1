"""The sm_90a route of ``lowbit.compile(..., target="cuda")`` to the wgmma + TMA GEMM of
kernels/cuda_wgmma.cu (issue 20; docs/gpu.md "wgmma int8 GEMM"), on a machine without a GPU:
the shell keeps linear_u8s8's signature, the pipeline's repack turns the VNNI weight bytes
into row-major bytes (checked by running it on the CPU), a tiny W8A8 BERT compiles for sm_90a
into sm_90 machine code built for sm_90a that calls the wgmma device function, and sm_90 /
sm_80 builds do not change. Numerics of the route on a GPU: not yet run (docs/gpu.md)."""

import shutil

import numpy as np
import pytest
import torch
import tvm
from transformers import BertConfig, BertModel
from tvm import relax
from tvm.script import tirx as T

from lowbit import recipes
from lowbit.backends.tvm.kernels.cuda import (
    CALLED,
    NUM_SMS,
    WGMMA_CONFIGS,
    _wgmma_bounds,
    arg_shapes,
    config_key,
    default_wgmma,
    kernel_configs,
    shell_u8s8,
    shell_u8s8_wgmma,
    wgmma_arch,
    wgmma_launch,
    wgmma_smem,
)
from lowbit.backends.tvm.kernels.registry import KERNEL_ATTR
from lowbit.backends.tvm.lowering.pack import pack_rowmajor, pack_vnni, vnni_to_rowmajor
from lowbit.backends.tvm.pipelines import common
from lowbit.backends.tvm.pipelines import cuda as cuda_pipeline
from lowbit.backends.tvm.pipelines.cuda import fatbin_arches, rowmajor_u8s8_weights
from lowbit.backends.tvm.target import resolve_target
from lowbit.capture import capture
from lowbit.compiler import compile
from lowbit.quantize import quantize

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
SM90A = {"kind": "cuda", "arch": "sm_90a"}


def test_only_sm90a_takes_the_route():
    assert wgmma_arch(resolve_target(SM90A))
    for t in ("cuda", {"kind": "cuda", "arch": "sm_90"}, {"kind": "cuda", "arch": "sm_80"}):
        assert not wgmma_arch(resolve_target(t))
    assert "wgmma" in cuda_pipeline.kernel_family(resolve_target(SM90A))[0]
    assert "wgmma" not in cuda_pipeline.kernel_family(resolve_target("cuda"))[0]


def test_wgmma_shell_keeps_signature():
    for cfg, (bm, bn, stages, _) in WGMMA_CONFIGS.items():
        f = shell_u8s8_wgmma(100, 200, 64, config=cfg)
        assert arg_shapes(f) == arg_shapes(shell_u8s8(100, 200, 64))
        assert f.attrs["lowbit.config"] == cfg and f.attrs[KERNEL_ATTR] == "linear_u8s8"
        script = f.script()
        # a persistent "_p" configuration calls the same device function on a smaller grid
        assert "tensormap_encode_tiled" in script
        assert f'"lowbit_wgmma_u8s8_{bm}x{bn}_s{stages}"' in script
    with pytest.raises(ValueError, match="K % 16"):
        shell_u8s8_wgmma(4, 16, 36)


def test_wgmma_configurations_valid():
    """Every configuration fits the SM: threads of its warpgroups, shared memory per CTA and
    per SM (227 KiB per CTA, 228 KiB per SM less 1 KiB per CTA), persistent grids capped."""
    assert len(WGMMA_CONFIGS) >= 10
    for cfg, (bm, bn, stages, persistent) in WGMMA_CONFIGS.items():
        assert cfg.startswith(f"{bm}x{bn}_s{stages}") and cfg.endswith("_p") == persistent
        assert bm in (64, 128) and bn % 64 == 0 and bn <= 256
        threads, per_sm, grid = wgmma_launch(cfg, 4096, 3072)
        assert threads == 128 * (1 + bm // 64) and per_sm == (1 if bm == 128 else 2)
        smem = wgmma_smem(bm, bn, stages)
        assert smem <= 227 * 1024 and per_sm * (smem + 1024) <= 228 * 1024, cfg
        tiles = -(-4096 // bm) * -(-3072 // bn)
        assert grid == (min(tiles, NUM_SMS * per_sm) if persistent else tiles)
        assert wgmma_launch(cfg, 1, 1)[2] == 1


def test_default_wgmma_is_the_measured_choice():
    """default_wgmma: the rule fitted to the H200 run of docs/gpu.md (64 x 64 tiles counted)."""
    for m, n, want in ((128, 3072, "64x64_s6"), (1024, 384, "64x64_s6"),
                       (1024, 768, "64x128_s4"), (4096, 384, "64x128_s4"),
                       (1024, 3072, "128x192_s4_p"), (4096, 1536, "128x192_s4_p"),
                       (4096, 3072, "128x192_s4_p")):
        assert default_wgmma(m, n, 768) == want, (m, n)
    for m in (1, 100, 128, 1024, 4096, 20000):
        for n in (16, 384, 3072, 50000):
            assert default_wgmma(m, n, 64) in WGMMA_CONFIGS


def test_tuned_table_picks_wgmma_config():
    """A record keyed u8s8|M,N,K|sm_90a (scripts/gpu_tune.py record) steers the sm_90a shell;
    a config that is not a wgmma one (an sm_90 record) is ignored."""
    tgt = resolve_target(SM90A)
    key = config_key("u8s8", (256, 384, 128), tgt)
    assert key == "u8s8|256,384,128|sm_90a"
    with kernel_configs({key: {"config": "128x256_s3_p"}}):
        assert shell_u8s8_wgmma(256, 384, 128, target=tgt).attrs["lowbit.config"] == "128x256_s3_p"
    with kernel_configs({key: {"config": "128x64_2x2_s3_k128"}}):
        f = shell_u8s8_wgmma(256, 384, 128, target=tgt)
        assert f.attrs["lowbit.config"] == default_wgmma(256, 384, 128)


def test_gpu_tune_records_sm90a(tmp_path):
    """scripts/gpu_tune.py record: timings of an sm_90a build are keyed u8s8|M,N,K|sm_90a, with
    default_wgmma as the default they are compared with; the route then reads them."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "scripts" / "gpu_tune.py"
    spec = importlib.util.spec_from_file_location("gpu_tune", path)
    gt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gt)
    res = {"device": "test", "target": "sm_90a", "results": [
        {"kind": "u8s8", "shape": [4096, 3072, 768], "config": c, "ok": ok, "ms": ms}
        for c, ok, ms in (("128x192_s4_p", True, 0.03), ("128x256_s3_p", True, 0.02),
                          ("64x64_s6", False, None))]}
    (tmp_path / "r.json").write_text(json.dumps(res))
    gt.record([str(tmp_path / "r.json")], str(tmp_path / "db"))
    table = json.loads((tmp_path / "db" / "cuda_kernels.json").read_text())
    entry = table["u8s8|4096,3072,768|sm_90a"]
    assert entry["config"] == "128x256_s3_p" and entry["default"] == "128x192_s4_p"
    with kernel_configs(table):
        f = shell_u8s8_wgmma(4096, 3072, 768, target=resolve_target(SM90A))
    assert f.attrs["lowbit.config"] == "128x256_s3_p"


def test_wgmma_launch_bounds_hook():
    """The source hook adds the CTAs-per-SM bound that the setmaxnreg split assumes."""
    code = ("extern \"C\" __global__ void __launch_bounds__(256) a_kernel(int* p) {\n"
            "  lowbit_wgmma_u8s8_64x128_s4(0, 0, p);\n}\n"
            "extern \"C\" __global__ void __launch_bounds__(384) b_kernel(int* p) {\n"
            "  lowbit_wgmma_u8s8_128x192_s4(0, 0, p);\n}\n"
            "extern \"C\" __global__ void __launch_bounds__(256) c_kernel(int* p) {\n"
            "  other(p);\n}\n")
    out = _wgmma_bounds(code)
    assert "__launch_bounds__(256, 2) a_kernel(" in out
    assert "__launch_bounds__(384, 1) b_kernel(" in out
    assert "__launch_bounds__(256) c_kernel(" in out


def test_rowmajor_packing():
    w = torch.randint(-128, 128, (20, 32), dtype=torch.int8)
    r = pack_rowmajor(w)
    assert r.shape == pack_vnni(w).shape                   # same signature as VNNI
    assert torch.equal(r.reshape(32, 32)[:20], w)          # row-major [Np, K] bytes
    assert not r.reshape(32, 32)[20:].any()                # zero rows pad N


def test_pipeline_repack_runs_like_pack_rowmajor():
    """rowmajor_u8s8_weights' Relax repack, compiled for the CPU, gives pack.py's bytes."""
    mod = rowmajor_u8s8_weights(_echo_weight(2, 8))     # N = 32, K = 32
    assert [f.attrs["lowbit.w_layout"] for _, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)] == ["rowmajor"]
    vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    w = torch.randint(-128, 128, (32, 32), dtype=torch.int8)
    packed = pack_vnni(w)
    x = np.zeros((1, 32), np.uint8)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed.numpy())).numpy()
    np.testing.assert_array_equal(got, vnni_to_rowmajor(packed).numpy())
    np.testing.assert_array_equal(got, pack_rowmajor(w).numpy())
    # K % 16 != 0: no wgmma shell for it (dlight reads VNNI), so no repack and no mark
    odd = _echo_weight(2, 9)                            # K = 36
    tvm.ir.assert_structural_equal(rowmajor_u8s8_weights(odd), odd)


def _echo_weight(a: int, b: int) -> tvm.IRModule:
    """main(x, w) = call_tir(k, [x, w]) with k marked linear_u8s8 (x [1, K] u8 first, like the
    kernel) copying w, the argument rowmajor_u8s8_weights repacks."""

    @T.prim_func(s_tir=True)
    def echo(x: T.Buffer((1, 4 * b), "uint8"), w: T.Buffer((a, b, 16, 4), "int8"),
             y: T.Buffer((a, b, 16, 4), "int8")):
        for i, j, c, d in T.grid(a, b, 16, 4):
            with T.sblock("y"):
                vi, vj, vc, vd = T.axis.remap("SSSS", [i, j, c, d])
                y[vi, vj, vc, vd] = w[vi, vj, vc, vd] + T.Cast("int8", x[0, vj * 4 + vd]) * T.int8(0)

    bb = relax.BlockBuilder()
    gv = bb.add_func(echo.with_attr(KERNEL_ATTR, "linear_u8s8"), "lowbit_linear_u8s8_echo")
    xv = relax.Var("x", relax.TensorType((1, 4 * b), "uint8"))
    wv = relax.Var("w", relax.TensorType((a, b, 16, 4), "int8"))
    with bb.function("main", [xv, wv]):
        y = bb.emit(relax.call_tir(gv, [xv, wv], relax.TensorType((a, b, 16, 4), "int8")))
        bb.emit_func_output(y)
    return bb.get()


@pytest.fixture(scope="module")
def tiny_q():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=256, vocab_size=100)
    ids = torch.randint(0, 100, (1, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gm = capture(BertModel(cfg).eval(), inputs)
    return quantize(gm, recipes.W8A8, calibration=[inputs], progress=False)


def _calls(func) -> int:
    return func.script().count("R.call_tir(")


def test_repack_is_lifted_to_transform_params(tiny_q):
    """For sm_90a the repack lands in main_transform_params (once, at load), not in main."""
    from lowbit.backends.tvm.api import _import_fx

    tgt = resolve_target(SM90A)
    imported, _ = _import_fx(tiny_q, None, cuda_pipeline.fx_passes(int8=True, int4=False))
    base = common.prepare(imported.mod, tgt)
    mod = cuda_pipeline.prepare(imported.mod, tgt)
    assert _calls(mod["main"]) == _calls(base["main"])          # nothing more per inference
    # 6 linears: one repack kernel (transpose + reshape, fused) each, at load
    assert _calls(mod["main_transform_params"]) == _calls(base["main_transform_params"]) + 6
    marked = [gv for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
              and f.attrs is not None and "lowbit.w_layout" in f.attrs]
    assert len(marked) == 3   # the three linear_u8s8 shapes of the tiny BERT
    # other targets: exactly common.prepare
    sm90 = resolve_target("cuda")
    tvm.ir.assert_structural_equal(cuda_pipeline.prepare(imported.mod, sm90),
                                   common.prepare(imported.mod, sm90))


@needs_nvcc
def test_compile_for_sm90a_calls_wgmma(tiny_q, tmp_path):
    CALLED.clear()
    mod = compile(tiny_q, target=SM90A, progress=False)
    assert any(c.startswith("lowbit_wgmma_u8s8_") for c in CALLED), CALLED
    assert not any(c.startswith("lowbit_gemm_u8s8_") for c in CALLED), CALLED
    assert [k for _, k in mod.meta["lowering"]].count("linear_u8s8") == 6
    folder = mod.save(tmp_path / "m")
    lib = (folder / "model.so").read_bytes()
    assert fatbin_arches(folder / "model.so") == ["sm_90"]   # sm_90 machine code ...
    assert b"-arch sm_90a" in lib                             # ... built for sm_90a (ptxas)
    assert b"runtime.cuTensorMapEncodeTiled" in lib           # host side builds the TMA maps
    assert b"__global__" not in lib


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_other_archs_keep_mma_sync(tiny_q, tmp_path, arch):
    CALLED.clear()
    mod = compile(tiny_q, target={"kind": "cuda", "arch": arch}, progress=False)
    assert any(c.startswith("lowbit_gemm_u8s8_") for c in CALLED), CALLED
    assert not any("wgmma" in c for c in CALLED), CALLED
    lib = (mod.save(tmp_path / "m") / "model.so").read_bytes()
    assert fatbin_arches(tmp_path / "m" / "model.so") == [arch]
    assert b"cuTensorMapEncodeTiled" not in lib and b"-arch sm_90a" not in lib
