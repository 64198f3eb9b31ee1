"""The CUDA rule set (schedules/cuda.py) on the kernels dlight leaves to ``Fallback``.

The case: the row test ``any(score != -inf)`` of the SDPA decomposition (per attention row, an
int8 ``max`` of ``cast(not(score == -inf))`` over the keys, output ``[B, H, S, 1]``). dlight's
``Reduction`` takes sums only and ``GeneralReduction`` wants an injective epilogue, so before
``WarpRowReduction`` it fell to ``Fallback``: one thread per row (68 us per launch on the H200,
60% of MiniLM's batch-1 kernel time; docs/gpu.md, "End to end on the H200").

- The rule takes it (not ``Fallback``): a 32-thread group per row (``threadIdx.x``, 256 for
  rows longer than ``WIDE``), 256 threads a block (``threadIdx.y`` rows), rows on
  ``blockIdx.x``; in the tiny W8A8 BERT compiled for CUDA too.
- It declines what is not its own: elementwise functions, a reduction with an epilogue
  (GeneralReduction's), a reduction over a leading axis, CPU targets; the CPU rule set does not
  hold it, so the CPU path's numerics are untouched (the function's own semantics, a fully
  masked row giving 0, checked through the CPU build).
- Build: the scheduled function compiles with nvcc for sm_90 (a cross-thread reduction in the
  source). Numerics and speed on the GPU: scripts/gpu_check_e2e.py (docs/gpu.md).
"""

import shutil

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.s_tir import dlight as dl

from lowbit.backends.tvm.schedules import cpu as cpu_rules
from lowbit.backends.tvm.schedules.base import apply_rules
from lowbit.backends.tvm.schedules.cuda import WarpRowReduction, default_rules

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")

CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
NEG_INF = tirx.const(float("-inf"), "float32")


def row_test(b=1, h=4, s=16, keys=16) -> tirx.PrimFunc:
    """The PrimFunc the CUDA pipeline fuses from the SDPA row test (equal, logical_not, cast,
    max with keepdims), as in fused_equal_tir_logical_not_cast3_max."""
    x = te.placeholder((b, h, s, keys), "float32", name="scores")
    eq = te.compute(x.shape, lambda *i: x(*i) == NEG_INF, name="T_equal")
    ne = te.compute(x.shape, lambda *i: tirx.Not(eq(*i)), name="T_logical_not")
    c = te.compute(x.shape, lambda *i: ne(*i).astype("int8"), name="compute")
    k = te.reduce_axis((0, keys), name="k")
    red = te.compute((b, h, s, 1), lambda i, j, q, _: te.max(c[i, j, q, k], axis=k), name="red")
    return te.create_prim_func([x, red])


def with_epilogue(keys=16) -> tirx.PrimFunc:
    x = te.placeholder((4, keys), "float32", name="x")
    k = te.reduce_axis((0, keys), name="k")
    m = te.compute((4,), lambda i: te.max(x[i, k], axis=k), name="m")
    y = te.compute((4,), lambda i: m[i] * 2.0, name="y")
    return te.create_prim_func([x, y])


def leading_reduction(keys=16) -> tirx.PrimFunc:
    x = te.placeholder((keys, 8), "float32", name="x")
    k = te.reduce_axis((0, keys), name="k")
    m = te.compute((8,), lambda j: te.max(x[k, j], axis=k), name="m")
    return te.create_prim_func([x, m])


def elementwise() -> tirx.PrimFunc:
    x = te.placeholder((4, 16), "float32", name="x")
    return te.create_prim_func([x, te.compute(x.shape, lambda *i: x(*i) + 1.0, name="y")])


def bindings(func: tirx.PrimFunc) -> dict[str, int]:
    out = {}

    def visit(node: tirx.For):
        if node.kind == tirx.ForKind.THREAD_BINDING:
            out[str(node.thread_binding.thread_tag)] = int(node.extent)
    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    return out


def schedule_with(rules, func, target=CUDA) -> tirx.PrimFunc:
    return apply_rules(tvm.IRModule({"main": func}), target, rules)["main"]


def test_dlight_declines_the_row_test():
    f = row_test()
    with CUDA:
        for rule in (dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction()):
            try:
                got = rule.apply(f, CUDA, False)
            except Exception:  # noqa: BLE001  (a decline by exception counts too)
                got = None
            assert got is None, type(rule).__name__


@pytest.mark.parametrize("b, keys, tx, ty", [(1, 16, 32, 8), (2, 128, 32, 8), (1, 2048, 256, 1)])
def test_rule_takes_the_row_test(b, keys, tx, ty):
    f = row_test(b=b, h=4, s=16, keys=keys)
    with CUDA:
        sch = WarpRowReduction().apply(f, CUDA, False)
    assert sch is not None
    rows = b * 4 * 16
    assert bindings(sch.mod["main"]) == {"blockIdx.x": -(-rows // ty), "threadIdx.y": ty,
                                         "threadIdx.x": tx}
    # the whole rule set gives it the same schedule (Fallback would bind one thread per row)
    full = schedule_with(default_rules(), f)
    assert "tirx.is_scheduled" in full.attrs
    assert bindings(full) == bindings(sch.mod["main"])


@pytest.mark.parametrize("func", [with_epilogue, leading_reduction, elementwise])
def test_rule_declines_others(func):
    with CUDA:
        assert WarpRowReduction().apply(func(), CUDA, False) is None


def test_cpu_path_untouched():
    llvm = tvm.target.Target("llvm")
    assert WarpRowReduction().apply(row_test(), llvm, False) is None
    assert not any(isinstance(getattr(r, "rule", r), WarpRowReduction)
                   for r in cpu_rules.default_rules())
    # the row test's semantics on the CPU build: 1 where a row has a finite score, 0 where the
    # row is fully masked
    x = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype("float32")
    x[0, 1, 3] = -np.inf
    x[0, 2, 5, :15] = -np.inf
    lib = tvm.compile(tvm.IRModule({"main": row_test()}), target=llvm)
    out = tvm.runtime.tensor(np.zeros((1, 4, 16, 1), "int8"))
    lib["main"](tvm.runtime.tensor(x), out)
    want = np.isfinite(x).any(-1, keepdims=True).astype("int8")
    np.testing.assert_array_equal(out.numpy(), want)
    assert out.numpy()[0, 1, 3, 0] == 0 and out.numpy()[0, 2, 5, 0] == 1


@needs_nvcc
@pytest.mark.parametrize("keys", [128, 2048])
def test_builds_for_sm_90(keys, monkeypatch):
    from lowbit.backends.tvm.kernels import cuda as kernels_cuda
    from lowbit.backends.tvm.pipelines.cuda import build_kernel

    sources = []
    postproc = kernels_cuda._postproc

    def spy(code, target=None):
        sources.append(str(code))
        return postproc(code, target)
    monkeypatch.setattr(kernels_cuda, "_postproc", spy)
    f = schedule_with(default_rules(), row_test(b=1, h=12, s=128, keys=keys))
    build_kernel(f, CUDA)
    src = "\n".join(sources)
    assert "__launch_bounds__(256)" in src and ("threadIdx.y" in src) == (keys <= 1024)
    assert "red_buf" in src or "__shfl" in src          # a cross-thread reduction


@needs_nvcc
def test_tiny_bert_row_test_gets_the_rule(monkeypatch):
    """The tiny W8A8 BERT compiled for CUDA: its row test (the only reduction without an
    epilogue) is scheduled by the rule, every other reduction by dlight's reduction rules."""
    import torch
    from transformers import BertConfig, BertModel

    import lowbit
    from lowbit.backends.tvm.pipelines import cuda as cuda_pipeline

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=128, vocab_size=100)
    ids = torch.randint(0, 100, (1, 16))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    q = lowbit.quantize(lowbit.capture(BertModel(cfg).eval(), x), lowbit.recipes.W8A8,
                        calibration=[x], progress=False)
    seen = {}
    schedule = cuda_pipeline.schedule

    def spy(mod, target, *a, **k):
        out = schedule(mod, target, *a, **k)
        seen["mod"] = out[0]
        return out
    monkeypatch.setattr(cuda_pipeline, "schedule", spy)
    lowbit.compile(q, target={"kind": "cuda", "arch": "sm_90"}, progress=False)
    tests = {gv.name_hint: f for gv, f in seen["mod"].functions_items()
             if "logical_not" in gv.name_hint and gv.name_hint.endswith("_max")}
    assert tests
    for name, f in tests.items():
        assert bindings(f) == {"blockIdx.x": 8, "threadIdx.y": 8, "threadIdx.x": 32}, name
