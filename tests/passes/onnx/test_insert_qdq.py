"""InsertQDQ, calibrate, quantize_onnx and load_onnx on ONNX files.

Structure: which QDQ ops appear (counts per recipe on the tiny BERT: 12 linears in 2 blocks,
8 activation tensors, 8 more sites with W8A8_FULL), integer initializers replace the float
weights, honest ``modified`` and idempotence, graphs left alone. Numbers: SQNR of the
quantized model against the float model in onnxruntime, on seeded inputs other than the
calibration batches; floors sit 3 to 6 dB under the lower of the two held-out batches
(tiny BERT, random weights with std 0.05, 4 calibration batches of 2 x 8 tokens):

    W8A8 50.0   W8A8_FULL 35.4   W8A8_DYNAMIC 50.8   W4A8 28.9   W4A16 (group 32) 29.1   [dB]

The quantized model runs op by op (``optimization="disable"``: DequantizeLinear, float MatMul),
so these are the QDQ graph's numbers, the same on every host (measured alike on a Zen 5 with
AVX-512 VNNI and under ``qemu-x86_64 -cpu EPYC-Milan``, AVX2). onnxruntime's integer kernels
are not: its u8 x s8 GEMM saturates where there is no VNNI (W8A8 37.4 dB on a Zen 3; see
``ort_u8s8_exact``), which tests/backends/test_onnxruntime.py checks with its own bound.

Bad input: opset too old, not ONNX, missing or truncated external data, no calibration, a
weight computed in the graph (skipped with its reason, not a crash), unknown input shapes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.config import PerGroup, QuantSpec
from lowbit.errors import CalibrationError, ConfigError, PreconditionError
from lowbit.passes.onnx import (
    InsertQDQ,
    OnnxModelError,
    calibrate,
    find_transformer,
    load_onnx,
    plan_sites,
    quantize_onnx,
    quantize_onnx_file,
    upgrade_opset,
)
from lowbit.recipes import W4A8, W4A16_G128, W8A8, W8A8_DYNAMIC, W8A8_FULL
from lowbit.testing import assert_idempotent, assert_untouched, op_counts, sqnr

pytest.importorskip("transformers")


import onnx_test_models as M  # conftest.py puts this folder on sys.path

W4A16_G32 = W4A16_G128.replace(name="W4A16_G32", weight=QuantSpec(bits=4, granularity=PerGroup(32)))
# recipe: (QuantizeLinear, DequantizeLinear, SQNR floor in dB) on the tiny BERT
EXPECTED = {"W8A8": (8, 20, 45.0), "W8A8_FULL": (16, 28, 29.0), "W8A8_DYNAMIC": (0, 12, 47.0),
            "W4A8": (8, 20, 26.0), "W4A16_G32": (0, 12, 26.0)}
RECIPES = {r.name: r for r in (W8A8, W8A8_FULL, W8A8_DYNAMIC, W4A8, W4A16_G32)}


@pytest.fixture(scope="module")
def bert() -> ir.Model:
    """The tiny BERT at opset 21, ready for InsertQDQ (the export is at opset 20), weights in
    memory (the exporter wrote them to ``bert.onnx.data``)."""
    model = load_onnx(M.onnx_file("bert"))
    ir.external_data.load_to_model(model)
    upgrade_opset(model, 21)
    return model


@pytest.fixture(scope="module")
def float_out():
    runner = OrtRunner(M.onnx_file("bert"))
    return [runner.run(b)[0] for b in M.batches(2, seed=500)]


def _prepared(model: ir.Model, recipe):
    plan = plan_sites(find_transformer(model), recipe)
    return InsertQDQ(recipe, calibrate(model, plan.static(), M.batches(4), runner=OrtRunner,
                                        progress=False))


# ---- structure --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXPECTED))
def test_recipes_structure_and_sqnr(bert, float_out, name):
    recipe = RECIPES[name]
    n_q, n_dq, floor = EXPECTED[name]
    before = op_counts(bert)
    pass_ = _prepared(bert, recipe)
    q = assert_idempotent(pass_, bert)
    counts = op_counts(q)
    assert (counts["QuantizeLinear"], counts["DequantizeLinear"]) == (n_q, n_dq)
    assert counts["MatMul"] == before["MatMul"] and counts["Transpose"] == before["Transpose"]
    inits = q.graph.initializers
    want = ir.DataType.INT4 if recipe.weight.bits == 4 else ir.DataType.INT8
    weights = [n.inputs[0] for n in q.graph if n.op_type == "DequantizeLinear"
               and n.inputs[0].is_initializer()]
    assert len(weights) == 12 and all(w.dtype == want for w in weights)
    float_weights = {ref.weight for _, ref in find_transformer(bert).blocks[0].linears()}
    assert not float_weights & set(inits), "float weights left behind"
    if recipe.activation is not None and recipe.activation.dynamic:
        assert counts["Round"] == 8 and counts["QuantizeLinear"] == 0     # per-token float math
    runner = OrtRunner(ir.to_proto(q), optimization="disable")     # the QDQ math, any host
    dbs = [sqnr(ref, runner.run(b)[0]) for ref, b in zip(float_out, M.batches(2, seed=500))]
    assert min(dbs) >= floor, f"{name}: SQNR {dbs} dB below {floor} dB"


def test_weight_forms(bert):
    """Per-channel int8: DequantizeLinear(W[K, N], s[N], axis=1) straight into the MatMul;
    group-wise int4: INT4 weights, blocked scales [K/32, N] along axis 0."""
    q = _prepared(bert, W8A8)(bert.clone()).graph
    mm = find_transformer(q).blocks[0].ffn.up.node
    dq = mm.inputs[1].producer()
    assert dq.op_type == "DequantizeLinear" and dq.attributes.get_int("axis") == 1
    assert dq.inputs[0].shape == ir.Shape([64, 128]) and dq.inputs[1].shape == ir.Shape([128])
    assert dq.metadata_props["lowbit.site"] == "encoder.layer.0.intermediate.dense.weight"
    q4 = _prepared(bert, W4A16_G32)(bert.clone()).graph
    dq = find_transformer(q4).blocks[0].ffn.down.node.inputs[1].producer()
    assert dq.inputs[0].dtype == ir.DataType.INT4 and dq.inputs[0].shape == ir.Shape([128, 64])
    assert (dq.attributes.get_int("axis"), dq.attributes.get_int("block_size")) == (0, 32)
    assert dq.inputs[1].shape == ir.Shape([4, 64])


def test_graph_left_alone(bert):
    """Everything ignored: nothing to do, nothing touched, modified=False."""
    assert_untouched(InsertQDQ(W8A8.replace(ignore=("encoder.*",))), bert)


def test_old_opset_refused_by_the_pass():
    model = load_onnx(M.onnx_file("bert"))          # opset 20
    with pytest.raises(PreconditionError, match="upgrade_opset"):
        InsertQDQ(W8A8_DYNAMIC)(model)


def test_static_sites_need_calibration(bert):
    with pytest.raises(CalibrationError, match="calibrate"):
        InsertQDQ(W8A8)(bert.clone())
    with pytest.raises(CalibrationError, match="pass calibration="):
        quantize_onnx(bert, W8A8)
    plan = plan_sites(find_transformer(bert), W8A8)
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(bert, plan.static(), iter([]), runner=OrtRunner, progress=False)


def test_calibration_streams_and_leaves_the_model_alone(bert):
    """A generator of batches of different shapes (symbolic dims), consumed one at a time,
    tokenizer extras the model does not take dropped; the model's outputs restored after."""
    plan = plan_sites(find_transformer(bert), W8A8)
    before = ir.to_proto(bert).SerializeToString()
    seen = []

    def gen():
        for i, seq in enumerate((8, 12, 5)):
            seen.append(i)
            batch = M.inputs(batch=1 + i, seq=seq, seed=i)
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])  # not a model input
            yield batch

    qparams = calibrate(bert, plan.static(), gen(), runner=OrtRunner, progress=False)
    assert seen == [0, 1, 2] and set(qparams) == {s.name for s in plan.static()}
    assert ir.to_proto(bert).SerializeToString() == before
    scale, zp = qparams["encoder.layer.0.attention.self.query:input"]
    assert scale.dtype.is_floating_point and 0 <= int(zp) <= 255


def test_computed_weight_skipped_with_reason(tmp_path):
    model = load_onnx(M.onnx_file("bert"))
    up = find_transformer(model).blocks[1].ffn.up.node
    scaled = ir.node("Mul", [up.inputs[1], ir.val("two", ir.DataType.FLOAT, ir.Shape([]),
                                                  const_value=ir.tensor(np.float32(2.0)))])
    model.graph.register_initializer(scaled.inputs[1])
    model.graph.insert_before(up, scaled)
    up.replace_input_with(1, scaled.outputs[0])
    q = quantize_onnx(model, W8A8, calibration=M.batches(2), out=tmp_path / "q.onnx",
                      progress=False)
    assert up.name in dict(json.loads(q.metadata_props["lowbit.skipped"]))
    assert op_counts(q)["DequantizeLinear"] < EXPECTED["W8A8"][1]
    OrtRunner(tmp_path / "q.onnx").run(M.inputs())   # it still runs


def test_shared_weights_quantized_once():
    """A block applied twice: each shared weight gets one integer copy read by both linears;
    site names stay unique (``block.q:input#1``); idempotent; SQNR floor 44 dB (measured 47.9,
    op by op: on a Zen 3, onnxruntime's saturating u8 x s8 kernel gives 23.0)."""
    model = load_onnx(M.onnx_file("shared"))
    ir.external_data.load_to_model(model)
    upgrade_opset(model, 21)
    floats = {ref.weight for _, ref in find_transformer(model).linears()}
    calib = [(torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(i)),)
             for i in range(3)]
    plan = plan_sites(find_transformer(model), W8A8)
    assert [s.name for s in plan.activations][4] == "block.q:input#1"
    q = assert_idempotent(InsertQDQ(W8A8, calibrate(model, plan.static(), calib,
                                                    runner=OrtRunner, progress=False)), model)
    weight_dqs = [n for n in q.graph if n.op_type == "DequantizeLinear"
                  and n.inputs[0].is_initializer()]
    assert len(weight_dqs) == len(floats) < 12 and not floats & set(q.graph.initializers)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(9))
    ref = OrtRunner(M.onnx_file("shared"))(x)[0]
    assert sqnr(ref, OrtRunner(ir.to_proto(q), optimization="disable")(x)[0]) >= 44.0


def test_unknown_input_shapes(tmp_path):
    """Inputs whose dims are all unknown (no names, no sizes) quantize and run."""
    model = load_onnx(M.onnx_file("bert"))
    for v in model.graph.inputs:
        v.shape = ir.Shape([None, None])
    q = quantize_onnx(model, W8A8_DYNAMIC, out=tmp_path / "q.onnx", progress=False)
    assert op_counts(q)["DequantizeLinear"] == 12
    assert OrtRunner(tmp_path / "q.onnx").run(M.inputs(seq=11))[0].shape == (1, 11, 64)


# ---- files: load, save, external data, atomic writes -----------------------------------------
def test_external_data_round_trip(tmp_path):
    src = tmp_path / "ext" / "model.onnx"
    src.parent.mkdir()
    proto = onnx.load(M.onnx_file("bert"))
    onnx.save_model(proto, src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    out = quantize_onnx_file(src, tmp_path / "out" / "q.onnx", W8A8_DYNAMIC)
    assert (out.parent / "q.onnx.data").is_file()
    reference = quantize_onnx(M.onnx_file("bert"), W8A8_DYNAMIC, progress=False)
    ir.external_data.load_to_model(reference)
    back = load_onnx(out)
    assert set(back.graph.initializers) == set(reference.graph.initializers)
    for name, v in reference.graph.initializers.items():
        assert np.array_equal(back.graph.initializers[name].const_value.numpy(),
                              v.const_value.numpy()), name
    feed = M.inputs(batch=2, seed=9)
    got = OrtRunner(out).run(feed)[0]
    assert np.array_equal(got, OrtRunner(ir.to_proto(reference)).run(feed)[0])


def test_missing_or_truncated_external_data(tmp_path):
    proto = onnx.load(M.onnx_file("bert"))
    onnx.save_model(proto, tmp_path / "m.onnx", save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    shutil.move(data, tmp_path / "elsewhere.data")
    with pytest.raises(OnnxModelError, match="m.onnx.data.*missing"):
        load_onnx(tmp_path / "m.onnx")
    data.write_bytes(b"\0" * 100)
    with pytest.raises(OnnxModelError, match="truncated"):
        load_onnx(tmp_path / "m.onnx")


def test_bad_files(tmp_path):
    with pytest.raises(OnnxModelError, match="no such ONNX file"):
        load_onnx(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", 1, ["n", 4])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 11)]),
              tmp_path / "old.onnx")
    with pytest.raises(OnnxModelError, match="opset 11 is too old.*opset_version=21"):
        load_onnx(tmp_path / "old.onnx")


def test_quantize_file_is_atomic(tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(ConfigError, match="role"):      # the recipe asks for what BERT lacks
        quantize_onnx_file(M.onnx_file("bert"), out, W8A8.replace(roles=("ffn.gate",)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="overwrite"):
        quantize_onnx_file(M.onnx_file("bert"), M.onnx_file("bert"), W8A8)
    path = quantize_onnx_file(M.onnx_file("bert"), out, "w8a8", M.batches(2), progress=False)
    # the exporter wrote the weights to bert.onnx.data: the output keeps them external too
    assert path == out and sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["lowbit.recipe"] == "W8A8"


def test_plan_names_match_fx_sites(bert):
    """Site names are FX's quantizer names; q, k and v share one input quantizer."""
    plan = plan_sites(find_transformer(bert), W8A8_FULL)
    names = [s.name for s in plan.activations]
    assert names[:2] == ["encoder.layer.0.attention.self.query:input",
                         "encoder.layer.0.attention.output.dense:input"]
    assert "block1.residual1" in names and "encoder.layer.1.output.dense:output" in names
    assert len(plan.activations[0].readers) == 3 and plan.skipped == []
    assert all(dataclasses.is_dataclass(s) for s in plan.weights)
