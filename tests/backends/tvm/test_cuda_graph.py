"""CUDA graphs for models compiled for CUDA (issue 20, item 3), on a machine without a GPU:
``lowbit.compile(..., cuda_graph=)`` reaches TVM's RewriteCUDAGraph (the built VM calls the
``vm.builtin.cuda_graph.*`` builtins; the kernels that read the model's inputs stay outside the
graphs), the choice round-trips through save/load, False gives the module built as before the
option existed, CPU targets refuse it. Replays on a GPU: scripts/gpu_check_e2e.py (docs/gpu.md)."""

import json
import re
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel

import lowbit
from lowbit.backends.tvm.pipelines import cuda as cuda_pipeline
from lowbit.backends.tvm.pipelines.cuda import CUDA_GRAPH_BUILTINS, uses_cuda_graph
from lowbit.backends.tvm.runtime import CompiledModule, load
from lowbit.errors import ConfigError

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


@pytest.fixture(scope="module")
def w8a8():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=128, vocab_size=100)
    ids = torch.randint(0, 100, (1, 16))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gm = lowbit.capture(BertModel(cfg).eval(), x)
    return lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=[x], progress=False)


def functions(text: str) -> dict[str, list[str]]:
    """VM executable text -> {function: [callee of each call instruction]}."""
    out, cur = {}, None
    for line in text.splitlines():
        if re.match(r"^@\S+:$", line):
            cur = line[1:-1]
            out[cur] = []
        elif cur and line.strip().startswith("call"):
            out[cur].append(line.split()[1])
    return out


@needs_nvcc
@pytest.mark.parametrize("arch, kernel", [("sm_90", "lowbit_linear_u8s8"),
                                          ("sm_90a", "lowbit_linear_u8s8")])
def test_graphs_by_default(w8a8, arch, kernel):
    mod = lowbit.compile(w8a8, target={"kind": "cuda", "arch": arch}, progress=False)
    assert mod.meta["cuda_graph"] is True and mod.cuda_graph
    assert uses_cuda_graph(mod.executable)
    f = functions(mod.executable.as_text())
    assert all(any(b in calls for calls in f.values()) for b in CUDA_GRAPH_BUILTINS)
    captures = [k for k in f if k.startswith("main_cuda_graph_capture")]
    assert captures and "cuda_graph_alloc" in f
    # the int8 GEMMs (on sm_90a: wgmma with TMA descriptors built in their host part) are
    # captured; main launches them only through the graphs
    inside = [c for k in captures for c in f[k]]
    assert any(c.startswith(kernel) for c in inside)
    assert not any(c.startswith(kernel) for c in f["main"])
    # the inputs (main's first two registers) never enter a graph: kernels outside copy them
    # into the static buffers the graphs read
    main_lines = mod.executable.as_text().split("@main:")[1].split("\n@")[0].splitlines()
    tuples = {ln.split("dst:")[1].strip(): ln for ln in main_lines if "vm.builtin.make_tuple" in ln}
    for ln in main_lines:
        if "run_or_capture" in ln:
            args = tuples[ln.split(",")[2].strip()]
            assert not re.search(r"in: %[01],|, %[01],|, %[01] dst", args), args


@needs_nvcc
def test_off_is_the_plain_module(w8a8, monkeypatch):
    """cuda_graph=False builds exactly what the pipeline built before the option (a plain
    tvm.compile of the scheduled module, no pass config)."""
    import tvm

    from lowbit.backends.tvm.kernels.cuda import cuda_source_hook

    seen = {}
    real = cuda_pipeline.build

    def spy(mod, target, **kw):
        seen["mod"], seen["target"] = mod, target
        return real(mod, target, **kw)

    monkeypatch.setattr(cuda_pipeline, "build", spy)
    mod = lowbit.compile(w8a8, target="cuda", progress=False, cuda_graph=False)
    assert mod.meta["cuda_graph"] is False and not mod.cuda_graph
    assert not uses_cuda_graph(mod.executable)
    passes = tvm.transform.Sequential(cuda_pipeline.lower_passes(seen["target"]))
    with cuda_pipeline._env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), seen["target"]:
        old = tvm.compile(seen["mod"], seen["target"], relax_pipeline=passes)
    assert mod.executable.as_text() == old.as_text()


@needs_nvcc
def test_meta_round_trip(w8a8, tmp_path):
    for graph in (True, False):
        mod = lowbit.compile(w8a8, target="cuda", progress=False, cuda_graph=graph)
        folder = mod.save(tmp_path / f"m{graph}")
        assert json.loads((folder / "meta.json").read_text())["cuda_graph"] is graph
        back = load(folder, device="not used here")   # no GPU: nothing runs, nothing loads
        assert back.cuda_graph is graph and back.meta["cuda_graph"] is graph
        assert uses_cuda_graph(back.executable) is graph


def test_old_meta_means_no_graphs():
    meta = {"inputs": [], "outputs": ["y"], "target": '{"kind":"cuda"}'}
    assert CompiledModule(None, [], meta).cuda_graph is False


def test_cpu_refuses_graphs(w8a8):
    with pytest.raises(ConfigError, match="cuda_graph"):
        lowbit.compile(w8a8, target="cpu", progress=False, cuda_graph=True)
