"""Both halves of every materialized TT layer quantized on the ONNX route (``quantize_tt``, read
by ``plan_sites``): the ONNX twin of FX's ``QuantizeTTHalves``. The tiny BERT of
onnx_test_models.py (hidden 64, 2 layers, seeded weights), TT rank 8 on its 12 attention and
FFN linears, materialized two ways: the ONNX ``TensorTrain(materialize=True)`` of the float
export ("onnx"), and ``lowbit.materialize_tt`` on FX then ``export_onnx`` ("fx_export").

* structure: after ``lowbit.quantize(..., W8A8)`` each of the 24 half MatMuls reads an int8
  weight DequantizeLinear and a u8 activation Q/DQ (today's role plan alone covers 8: a model
  whose TT record is removed keeps 16 halves float, which the same check reports); the halves
  leave ``Plan.skipped``; site names are FX's; an ignored role's halves stay float; the record
  survives save / load, a core (not materialized) model adds no site, an edited record is
  refused; a second InsertQDQ leaves the result alone; a model without TT layers gets the plan
  it had before.
* numbers: the ONNX-quantized file equals the FX-quantized graph (same sites, same
  calibration) within FX_AGREE_RTOL, on calibration and held-out inputs, and stays near the
  float TT model (W8A8_SQNR_DB).
"""

from __future__ import annotations

import copy
import json
import types

import numpy as np
import onnx_ir as ir
import pytest

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.passes.fx.insert_fake_quant import InsertFakeQuant, fake_quant_nodes
from lowbit.passes.fx.quantize_tt import QuantizeTTHalves
from lowbit.passes.onnx import InsertQDQ, find_transformer, load_onnx, plan_sites
from lowbit.passes.onnx.insert_qdq import plan_model
from lowbit.passes.onnx.quantize_tt import HALVES, materialized_halves
from lowbit.passes.patterns import LinearRef
from lowbit.passes.view import view_of
from lowbit.recipes import W8A8
from lowbit.testing import assert_untouched, sqnr

pytest.importorskip("transformers")

import onnx_test_models as M  # conftest.py puts this folder on sys.path

FX_AGREE_RTOL = 1e-5  # ONNX QDQ in onnxruntime vs the FX fake-quant graph, max |diff| / max |y|
                      # (measured 3.2e-7; with the 8 halves of the role plan alone: 1.1e-3 to
                      # 8.7e-3)
W8A8_SQNR_DB = 25.0   # vs the float TT model, as FX's test (measured 43.7 to 59.7 dB)
QUANTIZED = ("int8 weight", "u8 input")
LAYERS = 12           # q, k, v, o, FFN in, FFN out x 2 blocks


# Tiny GEMMs and TT-SVDs: on a loaded 2-core host two threads spin.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tt_onnx")
    gm = lowbit.capture(M.tiny_bert(), M.inputs())
    fx_tt = lowbit.materialize_tt(lowbit.tensor_train(gm, TT(ranks=8), progress=False))
    f32 = lowbit.export_onnx(gm, d / "f32.onnx")
    files = {"onnx": d / "onnx_tt.onnx", "fx_export": lowbit.export_onnx(fx_tt, d / "fx_tt.onnx")}
    lowbit.tensor_train(f32, TT(ranks=8), materialize=True, out=files["onnx"], progress=False)
    calib = [M.inputs(seed=s) for s in (5, 6, 7)]
    return types.SimpleNamespace(gm=gm, fx_tt=fx_tt, f32=f32, files=files, dir=d, calib=calib,
                                 feeds=[_np(b) for b in calib])


def _np(batch: dict) -> dict:
    return {k: v.numpy() for k, v in batch.items()}


def _form(v: ir.Value) -> str:
    """How a MatMul input is quantized: "int8 weight" (DequantizeLinear of an INT8
    initializer), "u8 input" (DequantizeLinear of a QuantizeLinear to UINT8), else "float"."""
    dq = v.producer()
    if dq is None or dq.op_type != "DequantizeLinear":
        return "float"
    src, zp = dq.inputs[0], dq.inputs[2] if len(dq.inputs) > 2 else None
    zp_type = zp.dtype if zp is not None else None
    if src.is_initializer() and src.dtype == ir.DataType.INT8:
        return "int8 weight"
    q = src.producer()
    if q is not None and q.op_type == "QuantizeLinear" and zp_type == ir.DataType.UINT8:
        return "u8 input"
    return "other"


def _halves(model: ir.Model) -> dict[str, tuple[str, str]]:
    """``<linear>.tt_a`` / ``.tt_b`` (as the graph view names the half) -> (weight form, input
    form)."""
    view, out = view_of(model), {}
    for node in view.nodes():
        ref = view.linear(node)
        if isinstance(ref, LinearRef) and ref.name.endswith(HALVES):
            out[ref.name] = (_form(node.inputs[1]), _form(node.inputs[0]))
    return out


def _float_halves(model: ir.Model) -> list[str]:
    return sorted(k for k, forms in _halves(model).items() if forms != QUANTIZED)


def _quantize(source, tt, recipe=W8A8, out=None) -> ir.Model:
    return lowbit.quantize(source, recipe, calibration=tt.feeds, out=out, progress=False)


def _without_record(path, out) -> str:
    model = ir.load(path)
    model.metadata_props.pop("lowbit.tt")
    ir.save(model, out)
    return str(out)


# ---- structure -------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["onnx", "fx_export"])
def test_every_half_quantized(tt, route):
    q = _quantize(tt.files[route], tt)
    halves = _halves(q)
    assert len(halves) == 2 * LAYERS
    assert _float_halves(q) == [], _halves(q)
    skipped = json.loads(q.metadata_props.get("lowbit.skipped", "[]"))
    assert not [name for name, _ in skipped if ".tt_" in name], skipped
    steps = {name: mod for name, mod, _ in q.meta["lowbit_pipeline"].steps}
    assert list(steps) == ["UpgradeOpset", "Calibrate", "InsertQDQ"] and steps["InsertQDQ"]


def test_the_check_finds_halves_left_float(tt):
    """Without its TT record the model is planned by role alone (the behaviour before the ONNX
    twin): 16 of 24 halves stay float, and ``_float_halves`` names each of them."""
    q = _quantize(_without_record(tt.files["onnx"], tt.dir / "norecord.onnx"), tt)
    spotted = {(b, f"attention.self.{p}", "tt_b") for b in (0, 1) for p in ("query", "key",
                                                                           "value")}
    spotted |= {(b, "attention.output.dense", "tt_a") for b in (0, 1)}
    want = sorted(f"encoder.layer.{b}.{p}.{h}" for b in (0, 1)
                  for p in ("attention.self.query", "attention.self.key", "attention.self.value",
                            "attention.output.dense", "intermediate.dense", "output.dense")
                  for h in HALVES if (b, p, h) not in spotted)
    assert len(want) == 16
    assert _float_halves(q) == want


def test_site_names_match_fx(tt):
    onnx_plan = plan_model(load_onnx(tt.files["fx_export"]), W8A8)
    prepared = copy.deepcopy(tt.fx_tt)
    InsertFakeQuant(W8A8)(prepared)
    QuantizeTTHalves(W8A8)(prepared)
    fx_sites = {prepared.get_submodule(n.target).site for n in fake_quant_nodes(prepared)}
    onnx_sites = {s.name for s in onnx_plan.weights + onnx_plan.activations}
    assert len(onnx_plan.weights) == 2 * LAYERS and len(onnx_plan.activations) == 20
    assert onnx_sites == fx_sites


def test_ignored_role_stays_float(tt):
    recipe = W8A8.replace(name="W8A8_noq", ignore=("attn.q",))
    q = _quantize(tt.files["onnx"], tt, recipe)
    assert _float_halves(q) == sorted(f"encoder.layer.{b}.attention.self.query.{h}"
                                      for b in (0, 1) for h in HALVES)
    assert {_halves(q)[f"encoder.layer.0.attention.self.query.{h}"] for h in HALVES} == {
        ("float", "float")}


def test_record_survives_save_and_load(tt):
    model = load_onnx(tt.files["onnx"])               # written by tensor_train(out=...)
    record = json.loads(model.metadata_props["lowbit.tt"])
    assert len(record) == LAYERS and all(e["materialized"] for e in record)
    halves = materialized_halves(model)
    assert [h.suffix for h in halves] == list(HALVES) * LAYERS
    assert {h.role for h in halves} == {"attn.q", "attn.k", "attn.v", "attn.o", "ffn.in",
                                        "ffn.out"}
    cores = lowbit.tensor_train(tt.f32, TT(ranks=8), progress=False)     # not materialized
    assert len(json.loads(cores.metadata_props["lowbit.tt"])) == LAYERS
    assert materialized_halves(cores) == []


def test_edited_record_is_refused(tt):
    model = load_onnx(tt.files["onnx"])
    record = json.loads(model.metadata_props["lowbit.tt"])
    record[0]["linear"] = "encoder.layer.0.attention.self.gone"
    model.metadata_props["lowbit.tt"] = json.dumps(record)
    with pytest.raises(ConfigError, match=r"self\.gone: materialized TT layer without its "
                                          r"encoder\.layer\.0\.attention\.self\.gone\.tt_a"):
        plan_model(model, W8A8)
    model.metadata_props["lowbit.tt"] = "[{"
    with pytest.raises(ConfigError, match="is not JSON"):
        plan_model(model, W8A8)


def test_second_insert_qdq_leaves_it_alone(tt):
    q = _quantize(tt.files["onnx"], tt)
    assert_untouched(InsertQDQ(W8A8), q)      # every half quantized: nothing left to plan


def test_model_without_tt_layers_plans_as_before(tt):
    model = load_onnx(tt.f32)
    assert materialized_halves(model) == []
    before = plan_sites(find_transformer(model), W8A8)
    after = plan_model(model, W8A8)
    assert [s.name for s in after.weights] == [s.name for s in before.weights]
    assert [s.name for s in after.activations] == [s.name for s in before.activations]
    assert after.skipped == before.skipped


# ---- numbers ---------------------------------------------------------------------------------
def _ratio(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_equals_fx_and_stays_near_float(tt):
    q_fx = lowbit.quantize(tt.fx_tt, W8A8, calibration=tt.calib, progress=False)
    _quantize(tt.files["fx_export"], tt, out=tt.dir / "q.onnx")
    _quantize(_without_record(tt.files["fx_export"], tt.dir / "fx_norecord.onnx"), tt,
              out=tt.dir / "q_role_only.onnx")
    ort, role_only = OrtRunner(tt.dir / "q.onnx"), OrtRunner(tt.dir / "q_role_only.onnx")
    float_tt = OrtRunner(tt.files["fx_export"])
    for batch in [*tt.calib, M.inputs(seed=9)]:
        want = q_fx(**batch).last_hidden_state.detach().numpy()
        got = ort(**_np(batch))[0]
        assert _ratio(got, want) <= FX_AGREE_RTOL
        assert _ratio(role_only(**_np(batch))[0], want) > 100 * FX_AGREE_RTOL  # the test can fail
        assert sqnr(float_tt(**_np(batch))[0], got) > W8A8_SQNR_DB
