"""TensorTrain on both IRs, MaterializeTT and ``lowbit.tensor_train``, on a hand-made MLP and a
tiny BERT (2 layers, hidden 64, FFN 128, seeded random weights).

* structure: the selected linears (by role, role glob or name glob) become cores + einsum /
  reshape / matmul steps; the head stays; honest ``modified``, idempotent, a graph with nothing
  to select left alone; materialize leaves two plain linears per layer that are never
  compressed again;
* FX numbers: at full rank the TT graph equals the dense model (EXACT_RTOL), in both forms;
  materialize equals the core graph (FP32_RTOL); int8 cores stay close (INT8_RTOL);
* QAT: a backward pass reaches every core and every learned scale;
* ONNX: the Einsum / Reshape / MatMul (/ DequantizeLinear) chain runs in onnxruntime and
  equals the FX graph (AGREE_RTOL), for both forms, int8 and int4 cores, materialized halves;
  the FX graph exports with ``lowbit.export_onnx`` and runs too;
* errors: dims that do not factor a layer, per-bond ranks a bond cannot hold (ConfigError
  naming the layer and value), a bad form, an uncaptured module, an opset below 13.

All ratios are max |diff| / max |reference| over the last hidden state.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.passes.fx.tt import TensorTrain as FxTT
from lowbit.passes.fx.tt_materialize import MaterializeTT
from lowbit.passes.onnx import load_onnx, save_onnx
from lowbit.passes.onnx.tt import TensorTrain as OnnxTT
from lowbit.passes.tt import tt_rules
from lowbit.testing import assert_idempotent, assert_untouched, op_counts

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "onnx"))
import onnx_test_models as M  # shared with tests/passes/onnx (the path above)

EXACT_RTOL = 1e-5   # full-rank TT vs dense: float64 SVDs cast to float32 cores (measured ~1e-6)
FP32_RTOL = 1e-5    # the same cores contracted in another float32 order (measured ~1e-7)
AGREE_RTOL = 1e-5   # FX vs onnxruntime (the 1e-5; measured ~2e-7)
INT8_RTOL = 0.05    # int8 cores at their min-max start vs float cores (measured ~0.01)
FULL = TT(ranks=10 ** 6)
aten = torch.ops.aten


# TT-SVDs and tiny GEMMs: on a loaded 2-core host two threads spin (~10x slower).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def bert_gm():
    return lowbit.capture(M.tiny_bert(), M.inputs())


def _hidden(out) -> torch.Tensor:
    y = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)
    return y.detach()


def _ratio(a, b) -> float:
    a, b = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t) for t in (a, b))
    return float(np.abs(a - b).max() / np.abs(b).max())


def _onnx_model(opset: int = 21) -> ir.Model:
    model = load_onnx(M.onnx_file("bert"))
    ir.external_data.load_to_model(model)     # the test snapshots serialize the model
    from lowbit.passes.onnx import upgrade_opset

    upgrade_opset(model, opset)
    return model


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(48, 96), torch.nn.Linear(96, 40)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@functools.cache
def mlp_gm():
    return lowbit.capture(MLP().eval(), (torch.randn(2, 5, 48),))


# ---- FX --------------------------------------------------------------------------------------
def test_hand_made_mlp_full_rank_equals_dense():
    gm = mlp_gm()
    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(1))
    for form in ("merged", "chain"):
        rules = tt_rules(FULL, ("*",))
        out = assert_idempotent(FxTT(rules, form, progress=False), gm)
        counts = op_counts(out)
        assert counts["aten.linear.default"] == 0 and counts["aten.einsum.default"] >= 2
        assert (counts["aten.matmul.default"] == 4) == (form == "merged")
        assert _ratio(out(x), gm(x)) <= EXACT_RTOL
        cores = [n for n, p in out.named_parameters() if ".tt_core" in n]
        assert len(cores) == 8 and all(out.get_parameter(n).requires_grad for n in cores)
        assert not any(n.endswith(".weight") for n, _ in out.named_parameters())
    assert_untouched(FxTT(tt_rules(FULL, ("attn.*", "nothing.*")), progress=False), gm)


@pytest.mark.parametrize("form", ["merged", "chain"])
def test_bert_full_rank_equals_dense(form):
    gm = bert_gm()
    tgm = lowbit.tensor_train(gm, FULL, form=form, progress=False)
    report = tgm.meta["lowbit_tt"]
    assert len(report) == 12 and {r["role"] for r in report} == {
        "attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out"}
    assert all(r["rel_error"] < 1e-6 for r in report)
    params = dict(tgm.named_parameters())
    assert "pooler.dense.weight" in params                     # the head is not selected
    assert "encoder.layer.0.attention.self.query.weight" not in params
    assert "encoder.layer.0.attention.self.query.weight" in dict(gm.named_parameters())
    assert _ratio(_hidden(tgm(**M.inputs())), _hidden(gm(**M.inputs()))) <= EXACT_RTOL


def test_selection_by_role_glob_and_name():
    rules = {"attn.*": TT(ranks=4), "encoder.layer.1.output.dense": TT(error=0.3)}
    tgm = lowbit.tensor_train(bert_gm(), rules, progress=False)
    report = {r["linear"]: r for r in tgm.meta["lowbit_tt"]}
    assert len(report) == 9
    last = report["encoder.layer.1.output.dense"]
    assert last["role"] == "ffn.out" and last["rel_error"] <= 0.3
    q = report["encoder.layer.0.attention.self.query"]
    assert q["ranks"] == [1, 4, 4, 4, 1] and q["in_modes"] == [8, 8]
    assert q["params"] == 8 * 4 * 2 + 4 * 8 * 4 * 2 and q["compression"] > 10


def test_qat_gradients_reach_cores_and_scales():
    tgm = lowbit.tensor_train(bert_gm(), TT(ranks=8, bits=8), progress=False)
    ref = lowbit.tensor_train(bert_gm(), TT(ranks=8), progress=False)
    y = tgm(**M.inputs())
    assert _ratio(_hidden(y), _hidden(ref(**M.inputs()))) <= INT8_RTOL
    _hidden_grad = (y[0] ** 2).mean()
    _hidden_grad.backward()
    tt_params = {n: p for n, p in tgm.named_parameters() if ".tt_" in n}
    scales = [n for n in tt_params if n.endswith(".scale")]
    assert len(tt_params) == 12 * 4 * 2 and len(scales) == 12 * 4
    missing = [n for n, p in tt_params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert op_counts(tgm)["module:TTCoreQuant"] == 48


@pytest.mark.parametrize("form, bits", [("merged", None), ("chain", 8)])
def test_materialize(form, bits):
    tgm = lowbit.tensor_train(bert_gm(), TT(ranks=6, bits=bits), form=form, progress=False)
    mgm = assert_idempotent(MaterializeTT(), tgm)
    counts = op_counts(mgm)
    assert counts["aten.linear.default"] == 2 * 12 + 1 and not counts["aten.einsum.default"]
    assert not counts["module:TTCoreQuant"]
    names = [n for n, _ in mgm.named_parameters()]
    assert not any(".tt_core" in n or ".tt_quant" in n for n in names)
    a = mgm.get_parameter("encoder.layer.0.intermediate.dense.tt_a")
    b = mgm.get_parameter("encoder.layer.0.intermediate.dense.tt_b")
    assert a.shape == (6, 64) and b.shape == (128, 6) and not a.requires_grad
    y, y_tt = _hidden(mgm(**M.inputs())), _hidden(tgm(**M.inputs()))
    assert _ratio(y, y_tt) <= FP32_RTOL
    assert_untouched(FxTT(tt_rules(FULL, ("encoder.*",)), progress=False), mgm)   # halves stay
    assert all(e["materialized"] for e in mgm.meta["lowbit_tt"])


@pytest.mark.parametrize("form", ["merged", "chain"])
def test_fx_graph_exports_to_onnx(tmp_path, form):
    tgm = lowbit.tensor_train(mlp_gm(), TT(ranks=4, bits=8), layers=("*",), form=form,
                              progress=False)
    path = lowbit.export_onnx(tgm, tmp_path / "tt.onnx")
    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(2))
    y = OrtRunner(path)(x.numpy())[0]
    assert _ratio(y, tgm(x)) <= AGREE_RTOL


# ---- ONNX ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form, bits, materialize", [
    ("merged", None, False), ("chain", None, False), ("merged", 8, False), ("chain", 4, False),
    ("merged", 8, True)])
def test_onnx_runs_in_onnxruntime_and_equals_fx(tmp_path, form, bits, materialize):
    spec = TT(ranks=4, bits=bits)
    fx_gm = lowbit.tensor_train(bert_gm(), spec, form=form, progress=False)
    model = lowbit.tensor_train(_onnx_model(), spec, form=form, materialize=materialize,
                                progress=False)
    counts = op_counts(model)
    assert counts["Einsum"] == (0 if materialize else 24 if form == "merged" else 48)
    assert counts["DequantizeLinear"] == (48 if bits and not materialize else 0)
    assert len(json.loads(model.metadata_props["lowbit.tt"])) == 12
    inits = model.graph.initializers
    if bits == 4:
        assert inits["encoder.layer.0.attention.self.query.tt_core1_q"].dtype == ir.DataType.INT4
    path = tmp_path / "tt.onnx"
    save_onnx(model, path, external_data=True)
    feeds = {k: v.numpy() for k, v in M.inputs().items()}
    y_fx = _hidden(fx_gm(**M.inputs()))
    for level in ("all", "disable"):
        assert _ratio(OrtRunner(path, optimization=level)(**feeds)[0], y_fx) <= AGREE_RTOL, level


def test_onnx_idempotent_untouched_and_opset():
    rules = tt_rules(TT(ranks=4))
    assert_idempotent(OnnxTT(rules, progress=False), _onnx_model())
    assert_untouched(OnnxTT(tt_rules(TT(ranks=4), ("nothing.*",)), progress=False), _onnx_model())
    old = _onnx_model(opset=18)
    old.opset_imports[""] = 12
    with pytest.raises(Exception, match="opset >= 13"):
        OnnxTT(rules, progress=False)(old)
    with pytest.raises(Exception, match="opset >= 21"):
        OnnxTT(tt_rules(TT(ranks=4, bits=4)), progress=False)(_onnx_model(opset=18))


def test_onnx_file_in_and_out(tmp_path):
    out = tmp_path / "bert.tt.onnx"
    model = lowbit.tensor_train(str(M.onnx_file("bert")), TT(ranks=4), out=out, progress=False)
    assert out.exists() and int(model.opset_imports[""]) >= 13
    y = OrtRunner(out)(**{k: v.numpy() for k, v in M.inputs().items()})[0]
    assert np.isfinite(y).all()


# ---- errors ----------------------------------------------------------------------------------
def test_dims_that_do_not_factor_a_layer_name_it():
    with pytest.raises(ConfigError, match=r"encoder\.layer\.0\.intermediate\.dense: TT\.dims "
                                          r"out_modes \(8, 8\) multiply to 64, not the layer's "
                                          r"128 out features"):
        lowbit.tensor_train(bert_gm(), TT(ranks=4, dims=((8, 8), (8, 8))), progress=False)


def test_ranks_a_bond_cannot_hold_name_the_layer():
    with pytest.raises(ConfigError, match=r"encoder\.layer\.0\.attention\.self\.query: "
                                          r"TT\.ranks\[0\] = 9 exceeds"):
        lowbit.tensor_train(bert_gm(), TT(ranks=(9, 9, 9)), layers=("attn.q",), progress=False)


@pytest.mark.parametrize("call, match", [
    (lambda: lowbit.tensor_train(bert_gm(), TT(ranks=4), form="dense"), "form must be one of"),
    (lambda: lowbit.tensor_train(bert_gm(), TT(ranks=4), rows=0), "rows"),
    (lambda: lowbit.tensor_train(bert_gm(), "tt"), "takes a lowbit.config.TT"),
    (lambda: lowbit.tensor_train(bert_gm(), {"attn.q": 4}), r"\(key, TT\) pairs"),
    (lambda: lowbit.tensor_train(bert_gm(), TT(ranks=4), layers="attn.q"), "layers must be"),
    (lambda: lowbit.tensor_train(MLP(), TT(ranks=4)), "takes a captured graph"),
    (lambda: lowbit.tensor_train(bert_gm(), TT(ranks=4), out="x.onnx"), "out= writes ONNX"),
    (lambda: lowbit.materialize_tt(MLP()), "materialize_tt"),
])
def test_bad_calls(call, match):
    with pytest.raises(Exception, match=match):
        call()


def test_user_graph_untouched():
    gm = bert_gm()
    before = copy.deepcopy(gm.state_dict())
    lowbit.tensor_train(gm, TT(ranks=4, bits=8), progress=False)
    assert gm.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in gm.state_dict().items())
