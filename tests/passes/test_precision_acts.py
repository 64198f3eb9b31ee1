"""The input choices of a ``PrecisionPlan`` (``PlanEntry.act``: "fp", "fp16", "int8") applied by
``lowbit.apply_precision`` (FX: passes/fx/{prune_subgroups,quantize_formats}.py) and its ONNX
twin (``apply_precision_onnx``), on a one-layer BERT whose linears are 256 wide, so that the
plan's group of 128 is a real group (tests/conftest.py's tiny_bert_batch is 32 wide).

- int8: the weight is stored per channel whatever the group, the input gets a static u8
  quantizer; ``lowbit.compile`` lowers exactly those linears to ``linear_u8s8`` and agrees
  with FX; with calibration only the "int8" linears get input quantizers (a plan naming no
  inputs keeps the legacy rule: tests/search/test_apply_formats.py::
  test_calibration_makes_int8_blocks_w8a8); without calibration a ConfigError names them;
- fp16: the graph equals the eager model with those modules' inputs (and the fp16 weight rows)
  rounded by hand, split linears included; one rounding per input tensor;
- ONNX: onnxruntime on the twin equals FX (W8A8 within W8A8_ATOL, fp16 within FP32_TOL), the
  int8 weights are per-channel DequantizeLinear, the fp16 inputs Cast pairs;
- the plan's JSON keeps the acts and applies to the same graph.
"""

from __future__ import annotations

import collections
import copy

import numpy as np
import onnx_ir as ir
import pytest
import torch
import torch.utils._pytree as pytree

import lowbit
from lowbit.apply_precision import apply_precision
from lowbit.errors import ConfigError
from lowbit.passes.fx.prune_subgroups import PLAN_META
from lowbit.passes.fx.quantize_formats import PRECISION_META
from lowbit.passes.onnx import load_onnx
from lowbit.passes.precision_plan import storage
from lowbit.search import PerNeurons, PrecisionPlan, SearchSpace, WholeLinear
from lowbit.testing import op_counts
from lowbit.testing.plans import cycled_plan

FP32_TOL = 1e-5     # the same rounded inputs and weights; sums in another order
W8A8_ATOL = 2e-3    # as tests/search/test_apply_formats.py: an input on a rounding tie
ACTS = ("fp", "fp16", "int8")
SPACE = SearchSpace(group=128, bcq_iters=2, activations=ACTS)
Q, K, V = (f"encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value"))
O, UP, DOWN = ("encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense",
               "encoder.layer.0.output.dense")
# q / up int8 inputs (int8 weights), k (BCQ) / v (int4) / down (BCQ) fp16 inputs, o fp
FORMATS = (("uniform", 8), ("bcq", 3), ("uniform", 4), ("fp", 32), ("uniform", 8), ("bcq", 3))
INPUTS = {Q: "int8", K: "fp16", V: "fp16", UP: "int8", DOWN: "fp16"}

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


def batch(seed: int) -> dict:
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def bert():
    """(eager BertModel, its captured graph): hidden 256, 2 heads, FFN 256."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=256, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=256, vocab_size=100)).eval()
    return model, lowbit.capture(model, batch(1))


@pytest.fixture(scope="module")
def onnx_bert(bert, tmp_path_factory):
    return lowbit.export_onnx(bert[1], tmp_path_factory.mktemp("acts") / "bert.onnx")


def with_inputs(plan: PrecisionPlan, acts: dict) -> PrecisionPlan:
    for linear, act in acts.items():
        plan = plan.edit_activation(linear, act)
    return plan


def mixed_plan(gm) -> PrecisionPlan:
    return with_inputs(cycled_plan(gm, (), FORMATS, SPACE, WholeLinear()), INPUTS)


def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def same(a, b, atol) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        torch.testing.assert_close(torch.as_tensor(x), y, rtol=0, atol=atol)


def test_int8_inputs_run_the_w8a8_kernel_and_tvm_agrees(bert):
    pytest.importorskip("tvm")
    from lowbit.backends.tvm.kernels.isa import isa_of
    from lowbit.backends.tvm.target import host_target

    _, gm = bert
    plan = mixed_plan(gm)
    q = apply_precision(gm, plan, calibration=[batch(s) for s in range(2)], progress=False)
    report = {r["linear"]: r for r in q.meta[PRECISION_META]}
    assert {k: r["act"] for k, r in report.items() if r["act"] != "fp"} == INPUTS
    assert [k for k, r in report.items() if r["kernel"] == "linear_u8s8"] == [Q, UP]
    assert report[Q]["group"] is None and report[K]["group"] == 128
    counts = op_counts(q)
    assert counts["quantized_decomposed.quantize_per_tensor.default"] == 2    # q, up inputs
    assert counts["quantized_decomposed.dequantize_per_channel.default"] == 2   # per channel
    assert counts["aten._to_copy.default"] - op_counts(gm)["aten._to_copy.default"] == 4
    mod = lowbit.compile(q, target="cpu", progress=False)
    linear_of = {n.name: n.meta.get(PLAN_META, {}).get("linear") for n in q.graph.nodes}
    kinds = {linear_of.get(name) or name: kind for name, kind in mod.meta["lowering"]}
    if isa_of(host_target()) is not None:
        assert [k for k, kind in kinds.items() if kind == "linear_u8s8"] == [Q, UP]
    assert {"bcq_linear", "linear_w4a16"} <= set(kinds.values())         # k, down / v
    x = batch(7)
    same(mod(**x), q(**x), W8A8_ATOL)


def test_only_int8_inputs_are_quantized_and_need_calibration(bert, onnx_bert):
    """Per-row int8 weights everywhere: the legacy rule (a plan naming no inputs) makes them
    all W8A8 with calibration; a plan that names inputs quantizes only the "int8" ones."""
    _, gm = bert
    legacy = cycled_plan(gm, (), (("uniform", 8),), SearchSpace(group=None), WholeLinear())
    named = with_inputs(cycled_plan(gm, (), (("uniform", 8),), SearchSpace(
        group=None, activations=("fp", "int8")), WholeLinear()), {O: "int8"})
    cal = [batch(s) for s in range(2)]
    qpt = "quantized_decomposed.quantize_per_tensor.default"
    assert op_counts(apply_precision(gm, legacy, calibration=cal, progress=False))[qpt] == 4
    q = apply_precision(gm, named, calibration=cal, progress=False)
    assert op_counts(q)[qpt] == 1
    assert [r["linear"] for r in q.meta[PRECISION_META] if r["act"] == "int8"] == [O]
    for graph in (gm, onnx_bert):
        with pytest.raises(ConfigError, match=rf"int8 inputs \({O}\).*pass calibration="):
            apply_precision(graph, named, progress=False)
    with pytest.raises(ConfigError, match="int8 inputs go with"):
        storage("uniform", 4, SPACE, 256, act="int8")


def test_fp16_inputs_equal_rounding_by_hand(bert):
    """fp32 / fp16 weight blocks (up split in blocks of 32 neurons) with fp16 inputs on k, v,
    up and down: the eager model with those inputs and the fp16 rows rounded to half."""
    model, gm = bert
    acts = {K: "fp16", V: "fp16", UP: "fp16", DOWN: "fp16"}
    plan = with_inputs(cycled_plan(gm, (), (("fp", 32), ("fp", 16)), SPACE, PerNeurons(32)),
                       acts)
    q = apply_precision(gm, plan, progress=False)
    assert {r["storage"] for r in q.meta[PRECISION_META] if r["linear"] == UP} == {"fp32",
                                                                                    "fp16"}
    # one rounding per input tensor: q / k / v share theirs, up, down
    assert op_counts(q)["aten._to_copy.default"] - op_counts(gm)["aten._to_copy.default"] == 6
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for e in plan.entries:
            if e.bits == 16:
                w = ref.get_submodule(e.linear).weight
                w[e.rows[0]:e.rows[1]] = w[e.rows[0]:e.rows[1]].half().float()
    for name in acts:
        ref.get_submodule(name).register_forward_pre_hook(
            lambda _, args: (args[0].half().float(), *args[1:]))
    x = batch(3)
    same(q(**x), ref(**x), FP32_TOL)
    plain = ref.__class__(ref.config).eval()
    plain.load_state_dict(ref.state_dict())          # the same weights, inputs not rounded
    assert max((a - b).abs().max() for a, b in zip(leaves(q(**x)), leaves(plain(**x)))) > 0


def test_onnx_twin_agrees_with_fx(bert, onnx_bert):
    from lowbit.backends.onnxruntime import OrtRunner
    from lowbit.onnx_apply_precision import apply_precision_onnx

    _, gm = bert
    cal = [batch(s) for s in range(2)]
    numpy_cal = [{k: v.numpy() for k, v in b.items()} for b in cal]
    x = batch(5)
    base = op_counts(load_onnx(onnx_bert))
    fp16 = with_inputs(cycled_plan(gm, (), FORMATS[1:4], SPACE, WholeLinear()),
                       {K: "fp16", V: "fp16", DOWN: "fp16"})
    for plan, atol in ((mixed_plan(gm), W8A8_ATOL), (fp16, FP32_TOL)):
        qo = apply_precision_onnx(onnx_bert, plan, calibration=numpy_cal, progress=False)
        counts = op_counts(qo)
        assert counts["Cast"] - base["Cast"] == 4          # 2 inputs rounded: q/k/v's, down's
        acts = {r["linear"]: r["act"] for r in qo.meta["lowbit_precision"]}
        assert acts == {n: plan.activations.get(n, "fp") for n in (Q, K, V, O, UP, DOWN)}
        int8 = [n for n, a in plan.activations.items() if a == "int8"]
        assert counts["QuantizeLinear"] == len(int8)
        scales = [n.inputs[1].const_value.shape for n in qo.graph
                  if n.op_type == "DequantizeLinear" and n.inputs[1].const_value is not None
                  and n.inputs[0].const_value is not None
                  and n.inputs[0].const_value.dtype == ir.DataType.INT8]
        assert collections.Counter(tuple(s) for s in scales)[(256,)] == len(int8)
        got = OrtRunner(ir.to_proto(qo))(**{k: v.numpy() for k, v in x.items()})
        want = apply_precision(gm, plan, calibration=cal, progress=False)(**x)
        for a, b in zip(got, leaves(want), strict=True):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=atol)


def test_plan_json_keeps_the_inputs(bert, tmp_path):
    _, gm = bert
    plan = mixed_plan(gm)
    plan.save(tmp_path / "plan.json")
    back = PrecisionPlan.load(tmp_path / "plan.json")
    assert back.entries == plan.entries and back.activations == INPUTS
    cal, x = [batch(0)], batch(2)
    same(apply_precision(gm, back, calibration=cal, progress=False)(**x),
         apply_precision(gm, plan, calibration=cal, progress=False)(**x), 0.0)
