"""``apply_precision_onnx`` (lowbit/onnx_apply_precision.py) and its ONNX passes
(passes/onnx/{prune_subgroups,shrink_axis,split_rows,quantize_formats}.py) on the tiny 2-layer
BERT, Llama (GQA 4/2), Gemma-3 (GQA 4/2, q/k norms) and GPT-2 (Conv1D Gemm, fused qkv) exported
with dynamic batch / sequence.

- structure: pruned heads and neuron blocks leave the graph (q/k/v/up/gate initializers lose
  rows, o/down columns, the GQA Expand / Reshape head counts shrink; spotting the result finds
  the smaller head counts), a linear pruned whole becomes its bias, all heads pruned removes
  the attention; the parameter count drops by exactly their size; mixed blocks give one
  MatMul / BCQLinear per block + a Concat, op counts follow the per-block report; honest
  ``modified`` and idempotence; the user's model and file are untouched;
- numbers: onnxruntime on the pruned float model equals the masked float model (pruned heads'
  o columns, pruned neurons' down columns zeroed) and FX ``apply_precision`` of the same plan,
  within FP32_TOL; the quantized model equals FX ``apply_precision`` (weight-only within
  FP32_TOL: the same dequantized weights and bit planes; W8A8 within W8A8_ATOL);
- TVM: the quantized model (int8 W8A8, BCQ, codes, fp16, fp32 blocks) compiles with
  ``lowbit.compile`` and agrees with onnxruntime (the int4 group-wise form is refused by TVM's
  ONNX importer, tests/backends/tvm/test_compile_onnx.py; the FX route lowers it);
- plans that do not fit: a ConfigError naming the entry.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
import torch.utils._pytree as pytree
from onnx_test_models import inputs, onnx_file, tiny_bert, tiny_gemma, tiny_gpt2, tiny_llama

import lowbit
from lowbit.apply_precision import apply_precision
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.errors import ConfigError
from lowbit.onnx_apply_precision import apply_precision_onnx
from lowbit.passes.onnx import load_onnx, upgrade_opset
from lowbit.passes.onnx.prune_subgroups import PRUNING_META, PruneSubgroups
from lowbit.passes.onnx.quantize_formats import (
    PRECISION_META,
    InsertFormatQDQ,
    QuantizeFormats,
)
from lowbit.passes.onnx.split_rows import SplitRowBlocks
from lowbit.passes.spot import find_transformer
from lowbit.passes.view import view_of
from lowbit.search import PrecisionPlan, SearchSpace
from lowbit.testing import assert_idempotent, assert_untouched, op_counts
from lowbit.testing.plans import cycled_plan

FP32_TOL = 1e-5     # the same sums with zero terms left out / the same dequantized weights
W8A8_ATOL = 2e-3    # as tests/search/test_apply_formats.py: an input on a rounding tie
TVM_ATOL = 2e-3     # TVM's int8 / bit-plane kernels vs onnxruntime's QDQ decomposition

MIXED = (("uniform", 4), ("bcq", 3), ("uniform", 8), ("fp", 32), ("uniform", 2), ("bcq", 2),
         ("uniform", 3), ("fp", 16))
PRUNE = ("block0.kv1", "block0.ffn1")
SPACES = {"per_row": SearchSpace(group=None, bcq_iters=2),
          "group32_affine_offset": SearchSpace(group=32, symmetric=False, bcq_iters=2,
                                               bcq_offset=True)}
HF = {"bert": tiny_bert, "llama": tiny_llama, "gemma": tiny_gemma, "gpt2": tiny_gpt2}

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def models():
    """name -> (path, float onnx_ir.Model in memory, FX graph of the same HF model)."""
    cache = {}

    def get(name):
        if name not in cache:
            path = onnx_file(name)
            model = load_onnx(path)
            ir.external_data.load_to_model(model)
            cache[name] = (path, model, lowbit.capture(HF[name](), inputs(2)))
        return cache[name]
    return get


def plan_for(graph, pruned=(), choices=(("fp", 32),), space=None) -> PrecisionPlan:
    """PerHead / PerNeurons(32) subgroups; ``pruned`` ties or whole linears, the others take
    ``choices`` in turn (``lowbit.testing.plans.cycled_plan``, as tests/search)."""
    return cycled_plan(graph, pruned, choices, SPACES["per_row"] if space is None else space)


def masked(model: ir.Model, plan: PrecisionPlan) -> ir.Model:
    """The float reference: pruned heads' o columns and pruned neurons' down columns zeroed;
    a linear pruned whole (not q/k/v/up/gate) has its weight zeroed."""
    ref = model.clone()
    tmap, view = find_transformer(ref), view_of(ref)
    pruned = collections.defaultdict(list)
    for e in plan.entries:
        if e.pruned:
            pruned[e.linear].append(e.rows)

    def zero_cols(r, a, b):
        w = np.array(view.param(r.weight))
        (w[:, a:b] if r.weight_layout == "out_in" else w[a:b])[...] = 0
        view.set_param(r.weight, w)

    structural = set()
    for blk in tmap.blocks:
        at, f = blk.attn, blk.ffn
        for a, b in pruned[at.q.name]:
            zero_cols(at.o, a, b)
        for a, b in pruned[f.up.name]:
            zero_cols(f.down, a, b)
        structural |= {r.name for _, r in at.linears() if r is not at.o}
        structural |= {r.name for r in (f.up, f.gate) if r is not None}
    for _, r in tmap.linears():
        if pruned[r.name] and r.name not in structural:
            view.set_param(r.weight, np.zeros_like(view.param(r.weight)))
    return ref


def ort(model: ir.Model, feed: dict) -> list[np.ndarray]:
    return OrtRunner(ir.to_proto(model))(**feed)


def feed(seed: int = 5) -> dict:
    return {k: v.numpy() for k, v in inputs(2, seed=seed).items()}


def fx_out(gm, x: dict) -> list[np.ndarray]:
    out = gm(**{k: torch.from_numpy(v) for k, v in x.items()})
    return [t.detach().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def close(a, b, atol) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def shape(model: ir.Model, name: str) -> tuple:
    return tuple(model.graph.initializers[name].shape)


# ---- structure and numbers of the pruning ---------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "llama", "gemma"])
def test_heads_and_neurons_leave_the_graph(name, models):
    _, model, gm = models(name)
    plan = plan_for(model, pruned=PRUNE)
    tmap = find_transformer(model)
    a, f = tmap.blocks[0].attn, tmap.blocks[0].ffn
    h, kv = a.num_heads, a.num_kv_heads
    before = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    pruned = assert_idempotent(PruneSubgroups(plan), model)

    q_rows, kv_rows = 16 * (h - h // kv), 16 * (kv - 1)        # the q heads of kv head 1
    assert shape(pruned, a.q.weight) == (64, q_rows)            # [in, out] MatMul weights
    assert shape(pruned, a.k.weight) == shape(pruned, a.v.weight) == (64, kv_rows)
    assert shape(pruned, a.o.weight) == (q_rows, 64)
    assert shape(pruned, f.up.weight) == (64, 96) and shape(pruned, f.down.weight) == (96, 64)
    bias = 1 if a.q.bias else 0
    freed = (16 * (h // kv) * (64 + bias + 64) + 2 * 16 * (64 + bias)
             + 32 * (64 + bias) * (2 if f.gate is not None else 1) + 32 * 64)
    report = pruned.meta[PRUNING_META]
    assert report["params_after"] == report["params_before"] - freed
    assert json.loads(pruned.metadata_props["lowbit.pruning"])["neurons"] == {"0": 96}
    blk = find_transformer(pruned).blocks[0].attn             # spotting sees fewer heads
    assert (blk.num_heads, blk.num_kv_heads) == (h - h // kv, kv - 1)
    if kv != h:     # GQA: an Expand target of block 0 holds 1 kv head, the other layer's 2
        expands = [n for n in pruned.graph if n.op_type == "Expand"
                   and n.inputs[0].shape is not None and len(n.inputs[0].shape) == 5]
        assert {e.outputs[0].shape[1] for e in expands} == {1, 2}

    x = feed()
    got = ort(pruned, x)
    close(got, ort(masked(model, plan), x), FP32_TOL)
    close(got, fx_out(apply_precision(gm, plan, progress=False), x), FP32_TOL)
    assert all(np.array_equal(before[k], v.const_value.numpy())
               for k, v in model.graph.initializers.items())


def test_whole_linears_become_their_bias(models):
    """BERT: o of block 0 pruned whole (q, k, v go too), all neurons of block 1 (down goes)."""
    _, model, _ = models("bert")
    o = "encoder.layer.0.attention.output.dense"
    plan = plan_for(model, pruned=(o, *(f"block1.ffn{j}" for j in range(4))))
    pruned = PruneSubgroups(plan)(model.clone()).graph
    report = pruned.meta[PRUNING_META]
    assert sorted(report["removed"]) == sorted([o, "encoder.layer.1.output.dense"])
    assert len(report["dead"]) == 4                       # q, k, v, intermediate
    counts, base = op_counts(pruned), op_counts(model)
    # q, k, v, o, up, down and block 0's two attention MatMuls (scores, context)
    assert base["MatMul"] - counts["MatMul"] == 8 and counts["Softmax"] == 1
    x = feed(2)
    close(ort(pruned, x), ort(masked(model, plan), x), FP32_TOL)


def test_all_heads_pruned_removes_the_attention(models):
    _, model, gm = models("llama")
    plan = plan_for(model, pruned=("block0.kv0", "block0.kv1"))
    pruned = PruneSubgroups(plan)(model.clone()).graph
    assert op_counts(pruned)["Softmax"] == 1
    assert "model.layers.0.self_attn.o_proj" in pruned.meta[PRUNING_META]["removed"]
    x = feed(1)
    close(ort(pruned, x), ort(masked(model, plan), x), FP32_TOL)
    close(ort(pruned, x), fx_out(apply_precision(gm, plan, progress=False), x), FP32_TOL)


# ---- mixed formats ------------------------------------------------------------------------
@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("name", ["bert", "llama", "gemma"])
def test_mixed_blocks_take_their_formats(name, space, models, tmp_path):
    path, model, gm = models(name)
    plan = plan_for(model, pruned=PRUNE, choices=MIXED, space=SPACES[space])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    q = apply_precision_onnx(path, plan, out=tmp_path / "q.onnx", progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    report = q.meta[PRECISION_META]
    assert sum(r["rows"][1] - r["rows"][0] for r in report) == sum(
        e.rows[1] - e.rows[0] for e in plan.entries if not e.pruned)
    kinds = [r["storage"] for r in report]
    split = [k for k, n in collections.Counter(r["linear"] for r in report).items() if n > 1]
    counts, base = op_counts(q), op_counts(PruneSubgroups(plan)(model.clone()).graph)
    assert counts["Concat"] - base["Concat"] == len(split) > 0
    assert counts["lowbit::BCQLinear"] == kinds.count("bcq") + kinds.count("codes")
    assert counts["DequantizeLinear"] == sum(kinds.count(k) for k in ("int4", "int8", "dequant"))
    assert {"bcq", "codes", "fp32", "fp16"} <= set(kinds)
    saved = load_onnx(tmp_path / "q.onnx")
    assert json.loads(saved.metadata_props["lowbit.precision"]) == report
    x = feed(4)       # the saved file: the model keeps the input's external data references
    close(OrtRunner(tmp_path / "q.onnx")(**x), fx_out(apply_precision(gm, plan, progress=False), x), FP32_TOL)


def test_gpt2_conv1d_gemm_and_fused_qkv(models, tmp_path):
    """GPT-2: Conv1D linears exported as Gemm / MatMul on [in, out] weights, a fused qkv:
    neuron blocks prune and every block takes its format; heads of the fused qkv refuse."""
    path, model, gm = models("gpt2")
    plan = plan_for(model, pruned=("block0.ffn1",), choices=MIXED)
    q = apply_precision_onnx(path, plan, out=tmp_path / "q.onnx", progress=False)
    assert q.meta[PRUNING_META]["neurons"] == {0: 224}
    x = feed(6)
    close(OrtRunner(tmp_path / "q.onnx")(**x), fx_out(apply_precision(gm, plan, progress=False),
                                                     x), FP32_TOL)
    with pytest.raises(ConfigError, match=r"entry \d+ \(transformer.h.0.attn.c_attn\[16:32\]\): "
                                          r"heads of a fused qkv projection do not prune yet"):
        apply_precision_onnx(model, plan_for(model, pruned=("block0.kv1",)), progress=False)


def test_split_and_quantize_passes_are_idempotent(models):
    _, model, _ = models("llama")
    plan = plan_for(model, pruned=PRUNE, choices=MIXED)
    start = model.clone()
    upgrade_opset(start, 21)
    assert_untouched(SplitRowBlocks(), start)                  # no plan tags: nothing to do
    assert_untouched(QuantizeFormats(plan.space, progress=False), start)
    pruned = PruneSubgroups(plan)(start).graph
    split = assert_idempotent(SplitRowBlocks(), pruned)
    formats = assert_idempotent(QuantizeFormats(plan.space, progress=False), split)
    qdq = assert_idempotent(InsertFormatQDQ(plan.space), formats)
    kinds = [r["storage"] for r in json.loads(qdq.metadata_props["lowbit.precision"])]
    assert op_counts(qdq)["DequantizeLinear"] == sum(kinds.count(k) for k in
                                                     ("int4", "int8", "dequant"))


def test_calibration_makes_int8_blocks_w8a8(models):
    _, model, gm = models("llama")
    plan = plan_for(model, pruned=PRUNE, choices=(("uniform", 8), ("uniform", 4)))
    batches = [inputs(2, seed=s) for s in range(2)]
    weight_only = apply_precision_onnx(model, plan, progress=False)
    w8a8 = apply_precision_onnx(model, plan, calibration=batches, progress=False)
    assert "QuantizeLinear" not in op_counts(weight_only)
    n_int8 = sum((e.code, e.bits) == ("uniform", 8) for e in plan.entries)
    assert 0 < op_counts(w8a8)["QuantizeLinear"] <= n_int8
    x = feed(7)
    close(ort(w8a8, x), fx_out(apply_precision(gm, plan, calibration=batches, progress=False),
                                x), W8A8_ATOL)


def test_tvm_compiles_it_and_agrees_with_onnxruntime(models, tmp_path):
    """BERT written by ``lowbit.export_onnx`` (static shapes: TVM's ONNX importer refuses the
    dynamic-shape exports' run-time Reshape targets, float model or not)."""
    pytest.importorskip("tvm")
    from lowbit.backends.tvm.kernels.isa import isa_of
    from lowbit.backends.tvm.target import host_target

    _, _, gm = models("bert")
    path = lowbit.export_onnx(gm, tmp_path / "bert.onnx")
    plan = plan_for(gm, pruned=PRUNE, choices=(("bcq", 3), ("uniform", 8), ("fp", 32),
                                               ("uniform", 3), ("fp", 16)))
    out = tmp_path / "mixed.onnx"
    apply_precision_onnx(path, plan, calibration=[inputs(2, seed=s) for s in range(2)],
                         out=out, progress=False)
    x = feed(3)
    mod = lowbit.compile(str(out), target="cpu", example_inputs=x, progress=False)
    kinds = {k for _, k in mod.meta["lowering"]}
    assert "bcq_linear" in kinds and any(k.startswith("fp32") for k in kinds)
    if isa_of(host_target()) is not None:
        assert "linear_u8s8" in kinds
    runner = OrtRunner(out)
    assert mod.output_names == runner.output_names
    close(mod(**x), runner(**x), TVM_ATOL)


# ---- plans that do not fit -----------------------------------------------------------------
def test_plans_that_do_not_fit_name_the_entry(models, tmp_path):
    path, model, _ = models("bert")
    plan = plan_for(model)
    q0 = plan.entries[0]
    assert q0.linear.endswith("query") and q0.rows == (0, 16)
    bad = {"the graph has no linear": {"linear": "encoder.layer.9.query"},
           "a plan of another model": {"in_features": 128},
           "role 'attn.k' in the plan": {"role": "attn.k"}}
    for msg, change in bad.items():
        entries = [dataclasses.replace(e, **change) if e.linear == q0.linear else e
                   for e in plan.entries]
        with pytest.raises(ConfigError, match=f"entry 0 .*{msg}"):
            apply_precision_onnx(model, PrecisionPlan(tuple(entries), plan.space),
                                 progress=False)
    _, llama, _ = models("llama")
    gqa = plan_for(llama)            # one q head of kv head 0 without the other
    entries = [dataclasses.replace(e, code="pruned", bits=0, pruned=True, tie=None)
               if e.linear.endswith(("q_proj", "k_proj", "v_proj")) and e.rows == (0, 16)
               else e for e in gqa.entries]
    with pytest.raises(ConfigError, match=r"q_proj\[0:16\]\): heads prune as kv head"):
        apply_precision_onnx(llama, PrecisionPlan(tuple(entries), gqa.space), progress=False)
    with pytest.raises(ConfigError, match="PrecisionPlan"):
        apply_precision_onnx(model, {"entries": []})
    with pytest.raises(ConfigError, match="ONNX path, onnx.ModelProto or onnx_ir.Model"):
        apply_precision_onnx(torch.nn.Linear(2, 2), plan)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        apply_precision_onnx(path, plan, out=path)


def test_lowbit_apply_precision_dispatches_onnx_inputs(models, tmp_path):
    """``lowbit.apply_precision`` on a path / ModelProto gives what ``apply_precision_onnx``
    gives; ``out`` on an FX graph is refused (it writes ONNX only)."""
    path, model, gm = models("bert")
    plan = plan_for(model, pruned=PRUNE, choices=MIXED)
    apply_precision_onnx(path, plan, out=tmp_path / "direct.onnx", progress=False)
    via = lowbit.apply_precision(path, plan, out=tmp_path / "via.onnx", progress=False)
    from_proto = lowbit.apply_precision(ir.to_proto(model), plan, progress=False)
    assert isinstance(via, ir.Model) and isinstance(from_proto, ir.Model)
    x = feed(6)     # saved files: they keep the input's external data references
    want = OrtRunner(tmp_path / "direct.onnx")(**x)
    close(OrtRunner(tmp_path / "via.onnx")(**x), want, 0.0)
    close(ort(from_proto, x), want, 0.0)
    with pytest.raises(ConfigError, match="out="):
        lowbit.apply_precision(gm, plan, out=tmp_path / "fx.onnx")
