"""lowbit.testing: each helper passes on equal things and fails with a readable report."""

import copy
import dataclasses
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lowbit.errors import ConfigError, VerifyError
from lowbit.passes.infra import Pass, PassResult
from lowbit.testing import (
    EquivalenceReport,
    assert_equivalent,
    assert_idempotent,
    assert_op_counts,
    assert_sqnr,
    assert_untouched,
    compare,
    input_specs,
    make_inputs,
    op_counts,
    sqnr,
)

# fp32, one runtime, same op order: these graphs agree to rounding.
RTOL = 1e-5
ATOL = 1e-6


class TwoHeads(torch.nn.Module):
    """Nested outputs: a dict holding a tensor and a list."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return {"logits": self.fc2(h), "aux": [h.sum(-1)]}


class TinyEncoder(torch.nn.Module):
    """Text-model inputs: ids into a 50-row embedding, an integer mask, a float bias."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask, bias):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).float()
        return self.fc(h) + bias


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TwoHeads().eval()


@pytest.fixture
def x():
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def gm(model, x):
    return torch.export.export(model, (x,)).module()


def perturbed(module, name="fc2.weight", index=(2, 5), delta=1e-3):
    out = copy.deepcopy(module)
    with torch.no_grad():
        out.get_parameter(name)[index] += delta
    return out


# ---------------------------------------------------------------------------- assert_equivalent

def test_equivalent_returns_report_per_output(model, gm, x):
    report = assert_equivalent(model, gm, (x,), rtol=RTOL, atol=ATOL)
    assert isinstance(report, EquivalenceReport) and report.passed
    assert [o.name for o in report.outputs] == ["logits", "aux.0"]
    assert report.outputs[0].shape == (3, 4) and report.outputs[0].max_abs_err == 0.0
    assert "logits" in str(report) and "rtol=1e-05" in str(report)


def test_equivalent_fails_naming_output_and_worst_element(model, x):
    with pytest.raises(AssertionError) as info:
        assert_equivalent(model, perturbed(model), (x,), rtol=RTOL, atol=ATOL)
    msg = str(info.value)
    assert "logits: shape (3, 4)" in msg and "FAIL" in msg
    assert "aux.0: shape (3,)" in msg  # the untouched output is reported too, as ok
    # fc2.weight[2, 5] feeds logits[:, 2] only: every worst element sits in column 2
    worst = [line for line in msg.splitlines() if line.strip().startswith("[")]
    assert worst and all(line.strip().split("]")[0].endswith(", 2") for line in worst)
    assert "before" in worst[0] and "after" in worst[0] and "abs err" in worst[0]


def test_equivalent_does_not_mutate_user_modules(x):
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x * 2

    m = Counting()
    assert_equivalent(m, m, (x,), rtol=RTOL, atol=ATOL)
    assert m.calls.item() == 0


def test_tolerances_are_required_and_checked(model, x):
    with pytest.raises(TypeError):
        assert_equivalent(model, model, (x,))  # no default tolerances
    with pytest.raises(ConfigError, match="atol"):
        assert_equivalent(model, model, (x,), rtol=RTOL, atol=-1.0)
    with pytest.raises(ConfigError, match="num_inputs"):
        assert_equivalent(model, model, (x,), rtol=RTOL, atol=ATOL, num_inputs=2)


def test_nan_positions_must_match():
    nan_at_0 = torch.tensor([math.nan, 1.0, 2.0])
    assert_equivalent(lambda: nan_at_0, lambda: nan_at_0.clone(), (), rtol=RTOL, atol=ATOL)
    with pytest.raises(AssertionError, match=r"mismatched 2/3"):
        assert_equivalent(lambda: nan_at_0, lambda: torch.tensor([0.0, math.nan, 2.0]), (),
                          rtol=RTOL, atol=ATOL)


def test_compare_rule_is_relative_to_before():
    before, after = np.array([100.0, 0.0]), np.array([100.05, 0.0])
    assert compare(before, after, rtol=1e-3, atol=0.0).passed  # 0.05 <= 1e-3 * 100
    assert not compare(after * 0 + 0.05, after * 0, rtol=1e-3, atol=0.0).passed
    stats = compare(np.zeros((2, 2)), np.zeros((2, 3)), rtol=RTOL, atol=ATOL, name="y")
    assert not stats.passed and "(2, 2) before, (2, 3) after" in str(stats)


def test_output_count_mismatch_is_reported(x):
    with pytest.raises(AssertionError, match=r"before has 1 output.*after has 2"):
        assert_equivalent(lambda x: x, lambda x: (x, x), (x,), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- generated inputs

def test_inputs_from_export_metadata():
    torch.manual_seed(0)
    enc = TinyEncoder().eval()
    example = (torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long),
               torch.zeros(8))
    gm = torch.export.export(enc, example).module()
    specs = input_specs(gm)
    assert [(s.name, s.shape, s.vocab) for s in specs] == [
        ("input_ids", (2, 6), 50), ("attention_mask", (2, 6), None), ("bias", (8,), None)]
    inputs = make_inputs(specs, seed=3)
    assert inputs["input_ids"].max() < 50 and inputs["input_ids"].dtype == torch.long
    assert bool((inputs["attention_mask"] == 1).all())
    assert inputs["bias"].dtype == torch.float32 and inputs["bias"].std() > 0
    assert torch.equal(make_inputs(specs, seed=3)["bias"], inputs["bias"])  # seeded
    # inputs=None: metadata comes from whichever side has it (the eager model has none)
    report = assert_equivalent(enc, gm, rtol=RTOL, atol=ATOL, seed=5, num_inputs=2)
    assert report.seeds == (5, 6) and len(report.outputs) == 2


def test_no_metadata_is_a_verify_error(model):
    with pytest.raises(VerifyError, match="pass inputs explicitly"):
        assert_equivalent(model, model, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- ONNX

def linear_onnx(weight, vocab=30):
    """ids [batch, seq] -> Gather(table) -> MatMul(weight^T): the TinyEncoder shape of things."""
    table = np.random.default_rng(0).standard_normal((vocab, weight.shape[1])).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["h"]),
         helper.make_node("MatMul", ["h", "wt"], ["y"])],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", weight.shape[0]])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight.T.copy(), "wt")],
    )
    opset = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opset, ir_version=10), table


def test_onnx_specs_symbolic_dims_and_vocab():
    proto, _ = linear_onnx(np.ones((4, 8), np.float32))
    (spec,) = input_specs(proto)
    assert spec.shape == ("batch", "seq") and spec.vocab == 30
    assert make_inputs([spec])["input_ids"].shape == (1, 8)  # batch-like -> 1, other -> 8
    assert make_inputs([spec], batch=2, seq=3)["input_ids"].shape == (2, 3)


def test_onnx_against_torch(tmp_path):
    weight = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    proto, table = linear_onnx(weight)
    reference = lambda input_ids: torch.from_numpy(table)[input_ids] @ torch.from_numpy(weight).T
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    for model in (proto, str(path), path, ir.serde.deserialize_model(proto)):
        assert_equivalent(model, reference, rtol=RTOL, atol=ATOL)  # inputs from ONNX metadata
    off = weight.copy()
    off[1, 2] += 1e-3
    bad, _ = linear_onnx(off)
    with pytest.raises(AssertionError, match=r"y: shape \(1, 8, 4\) .* FAIL"):
        assert_equivalent(reference, bad, rtol=RTOL, atol=ATOL)


def test_missing_onnx_file_is_a_verify_error(tmp_path):
    with pytest.raises(VerifyError, match="no such file"):
        assert_equivalent(tmp_path / "absent.onnx", lambda x: x, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- SQNR

def test_sqnr_values():
    ref = torch.ones(4)
    assert sqnr(ref, ref) == math.inf
    assert sqnr(ref, ref + 0.1) == pytest.approx(20.0)  # 4 / (4 * 0.01) = 100 -> 20 dB
    assert sqnr(torch.zeros(4), ref) == -math.inf
    with pytest.raises(VerifyError, match="shapes differ"):
        sqnr(torch.ones(3), torch.ones(4))


def test_assert_sqnr(model, x):
    dbs = assert_sqnr(model, perturbed(model), (x,), min_db=40)
    assert set(dbs) == {"logits", "aux.0"} and dbs["aux.0"] == math.inf
    with pytest.raises(AssertionError, match=r"logits: shape \(3, 4\)  SQNR .* FAIL"):
        assert_sqnr(model, perturbed(model, delta=10.0), (x,), min_db=40)


# ---------------------------------------------------------------------------- op counts

def test_op_counts_fx(gm):
    counts = op_counts(gm)
    assert counts["aten.linear.default"] == 2 and counts["aten.relu.default"] == 1
    assert not any("guards" in k for k in counts)
    assert_op_counts(gm, {"aten.linear.default": 2, "aten.relu.default": 1})
    assert_op_counts(gm, dict(counts), exact=True)
    with pytest.raises(AssertionError, match=r"aten.linear.default: expected 3, got 2"):
        assert_op_counts(gm, {"aten.linear.default": 3})
    with pytest.raises(AssertionError, match=r"aten.relu.default: expected 0, got 1"):
        assert_op_counts(gm, {"aten.linear.default": 2}, exact=True)


def test_op_counts_onnx_domains():
    proto, _ = linear_onnx(np.ones((4, 8), np.float32))
    proto.graph.node.append(helper.make_node("BcqGemm", ["y"], ["z"], domain="lowbit"))
    expected = {"Gather": 1, "MatMul": 1, "lowbit::BcqGemm": 1}
    assert op_counts(proto) == expected
    assert op_counts(ir.serde.deserialize_model(proto)) == expected


# ---------------------------------------------------------------------------- pass contract

@dataclasses.dataclass(frozen=True)
class NoOp(Pass):
    def call(self, graph):
        return PassResult(graph, False)


@dataclasses.dataclass(frozen=True)
class ReluToGelu(Pass):
    """Idempotent: a second run finds no relu."""

    def call(self, gm):
        relus = [n for n in gm.graph.nodes if n.target is torch.ops.aten.relu.default]
        for n in relus:
            n.target = torch.ops.aten.gelu.default
        gm.recompile()
        return PassResult(gm, bool(relus))


@dataclasses.dataclass(frozen=True)
class ScaleWeight(Pass):
    """Changes a weight every run; ``honest`` decides what it reports."""

    honest: bool = True

    def call(self, gm):
        with torch.no_grad():
            gm.get_parameter("fc1.weight").mul_(2.0)
        return PassResult(gm, self.honest)


@dataclasses.dataclass(frozen=True)
class AlwaysModified(Pass):
    def call(self, graph):
        return PassResult(graph, True)


def test_untouched(gm):
    assert_untouched(NoOp(), gm)
    with pytest.raises(AssertionError, match=r"ReluToGelu must leave .* modified=True"):
        assert_untouched(ReluToGelu(), gm)
    with pytest.raises(AssertionError, match=r"(?s)changed the graph:.*-.*aten.relu.*\+.*aten.gelu"):
        assert_untouched(ReluToGelu(), gm)
    with pytest.raises(AssertionError, match=r"tensor fc1.weight: .* -> "):
        assert_untouched(ScaleWeight(honest=False), gm)
    assert any(n.target is torch.ops.aten.relu.default for n in gm.graph.nodes)  # copy only


def test_idempotent(gm):
    out = assert_idempotent(ReluToGelu(), gm)
    assert op_counts(out)["aten.gelu.default"] == 1 and op_counts(gm)["aten.relu.default"] == 1
    with pytest.raises(AssertionError, match=r"ScaleWeight is not idempotent.*modified=True"):
        assert_idempotent(ScaleWeight(), gm)
    with pytest.raises(AssertionError, match=r"reported modified=False but changed"):
        assert_idempotent(ScaleWeight(honest=False), gm)
    with pytest.raises(AssertionError, match=r"AlwaysModified is not idempotent"):
        assert_idempotent(AlwaysModified(), gm)


@dataclasses.dataclass(frozen=True)
class ScaleInitializer(Pass):
    """An onnx_ir pass that rescales an initializer and claims it changed nothing."""

    def call(self, model):
        init = model.graph.initializers["wt"]
        init.const_value = ir.tensor(init.const_value.numpy() * 2)
        return PassResult(model, False)


def test_pass_contract_on_onnx_ir():
    proto, _ = linear_onnx(np.ones((4, 8), np.float32))
    model = ir.serde.deserialize_model(proto)
    assert_untouched(NoOp(), model)
    assert_idempotent(NoOp(), model)
    with pytest.raises(AssertionError, match=r"tensor wt: .* -> "):
        assert_untouched(ScaleInitializer(), model)
    assert model.graph.initializers["wt"].const_value.numpy().max() == 1.0  # copy only
