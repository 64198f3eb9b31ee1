"""PegPermute on ONNX graphs: PEG's range-sorted channel order folded into the initializers.

Exactness: the permuted float model computes what the original computes in onnxruntime (only
the order of float sums changes). Structure: the gathers left are the ones the model forces
and are named with their reason (BERT: the returned hidden state; GPT-2, whose LM head is
tied to the embedding table: none, the table's columns are permuted once for both readers;
Llama, untied: none; Gemma 3, decomposed RMSNorm and a tied head: none), a second run changes
nothing.
Through ``quantize_onnx``: contiguous PEG groups, the same model FX builds (same observers,
same ``shared_order``), and the report kept in the file's metadata.
"""

from __future__ import annotations

import json
from unittest.mock import ANY

import numpy as np
import onnx_ir as ir
import pytest

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.passes.onnx import find_transformer, load_onnx, plan_sites, quantize_onnx, upgrade_opset
from lowbit.passes.onnx.calibrate import observe
from lowbit.passes.onnx.peg_permute import PegPermute
from lowbit.recipes import peg_recipe
from lowbit.testing import sqnr

pytest.importorskip("transformers")

import onnx_test_models as M

K = 4


def _load(name) -> ir.Model:
    model = load_onnx(M.onnx_file(name) if isinstance(name, str) else name)
    ir.external_data.load_to_model(model)
    upgrade_opset(model, 21)
    return model


def _permuted(name: str, recipe=None):
    model = _load(name)
    ref = OrtRunner(ir.to_proto(model))
    static = plan_sites(find_transformer(model), recipe or peg_recipe(K, True)).static()
    ranges = observe(model, static, M.batches(2), runner=OrtRunner, progress=False)
    before = {k: (lo.clone(), hi.clone()) for k, (lo, hi) in ranges.items()}
    report = PegPermute(tuple(static), ranges)(model)
    return model, ref, static, ranges, before, report


@pytest.mark.parametrize("name, gathers", [
    ("bert", ["graph output"]),
    ("gpt2", []),             # the LM head tied to the embedding: one permutation for both
    ("llama", []),
    ("gemma", []),            # decomposed RMSNorm, sandwich norms, tied head: all folded
    ("bert_ts14", ["graph output"]),
])
def test_exact_and_gathers(name, gathers):
    model, ref, _, _, _, report = _permuted(name)
    assert report.modified and len(report.families) == 1
    fam = report.families[0]
    assert len(fam["sites"]) == 8 and fam["params"] > 0
    assert len(report.gathers) == len(gathers)
    for (_, why), expect in zip(report.gathers, gathers):
        assert expect in why
    out = OrtRunner(ir.to_proto(model))
    assert out.output_names == ref.output_names          # the output keeps its name
    for b in M.batches(2, seed=500):
        for a, c in zip(ref.run(b), out.run(b)):
            np.testing.assert_allclose(c, a, rtol=1e-5, atol=5e-6 * np.abs(a).max())


def test_ranges_permuted_and_idempotent():
    """The permuted ranges come back in the report; the pass leaves the dict it was given (and
    its sites) as they were."""
    model, _, static, ranges, before, report = _permuted("bert")
    p = report.families[0]["order"]
    assert sorted(p.tolist()) == list(range(64)) and p.tolist() != list(range(64))
    assert report.sites == tuple(static)
    for s in static:
        for given, kept in zip(ranges[s.name], before[s.name]):     # the input: unchanged
            assert np.array_equal(given.numpy(), kept.numpy())
        lo, hi = report.ranges[s.name]
        if s.name in report.families[0]["sites"]:
            assert np.array_equal(lo.numpy(), before[s.name][0][p].numpy())
            assert np.array_equal(hi.numpy(), before[s.name][1][p].numpy())
        else:                                             # per-tensor sites: untouched
            assert np.array_equal(hi.numpy(), before[s.name][1].numpy())
    again = PegPermute(tuple(static), ranges)(model)
    assert not again.modified and not again.families


def test_no_seed_without_permute():
    *_, report = _permuted("bert", peg_recipe(K, permute=False))
    assert not report.modified


def test_quantize_onnx_contiguous_groups_and_fx_parity():
    import lowbit

    recipe = peg_recipe(K, True)
    q = quantize_onnx(_load("bert"), recipe, calibration=M.batches(4), progress=False)
    per_axis = [n for n in q.graph if n.op_type == "QuantizeLinear"
                and n.attributes.get_int("axis", 1) == 2]
    assert len(per_axis) == 8
    for n in per_axis:       # constant on K contiguous runs of 64 / K channels
        scale = n.inputs[1].const_value.numpy()
        assert all(len(np.unique(g)) == 1 for g in scale.reshape(K, -1))
    meta = json.loads(q.metadata_props["lowbit.peg"])
    assert len(meta) == 1 and len(meta[0]["gathers"]) == 1
    gm = lowbit.capture(M.tiny_bert(), M.batches(1)[0], dynamic=True)
    fx = lowbit.quantize(gm, recipe, calibration=M.batches(4), progress=False)
    runner = OrtRunner(ir.to_proto(q), optimization="disable")   # the QDQ math, any host
    for b in M.batches(2, seed=500):
        assert sqnr(fx(**b).last_hidden_state.detach().numpy(), runner.run(b)[0]) >= 60.0


def test_shared_vectors_are_copied(tmp_path):
    """A default-initialized BERT: the exporter stores its equal zero biases / LayerNorm betas
    once, read by many nodes in and out of the family. Such channel vectors get permuted
    copies (not gathers, which would hide the linears' bias Adds from spotting), and the file
    still quantizes: the residual sums are found again by InsertQDQ."""
    import torch
    import transformers

    import lowbit

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=M.VOCAB)
    model = transformers.BertModel(cfg).eval()
    path = lowbit.export_onnx(lowbit.capture(model, M.inputs(2)), tmp_path / "f32.onnx")
    shared = [v for v in load_onnx(path).graph.initializers.values()
              if len(v.shape) == 1 and len(v.uses()) > 1]
    assert shared                           # the case under test exists in this export
    model, ref, *_, report = _permuted(path)          # float: exact, copies not gathers
    why = "graph output: the model returns it in its own channel order"
    assert report.families[0]["gathers"] == [(ANY, why)]
    out = OrtRunner(ir.to_proto(model))
    for b in M.batches(2, batch=2, seed=500):
        np.testing.assert_allclose(out.run(b)[0], ref.run(b)[0], rtol=1e-5, atol=1e-5)
    feeds = [{k: v.numpy() for k, v in b.items()} for b in M.batches(4)]
    q = quantize_onnx(path, peg_recipe(K, True), calibration=feeds, progress=False)
    (fam,) = json.loads(q.metadata_props["lowbit.peg"])
    assert [why for _, why in fam["gathers"]] == [
        "graph output: the model returns it in its own channel order"]
    assert any(name.endswith("_peg") for name in q.graph.initializers)
    ref = OrtRunner(path)
    out = OrtRunner(ir.to_proto(q))
    b = feeds[0]
    assert sqnr(ref.run(b)[0], out.run(b)[0]) > 20.0


def test_gathers_where_nothing_folds():
    """A hand-built graph where the family meets a reader it cannot permute (Softsign) and an
    embedding table also read outside the family (a head fed by that reader): both get an
    explicit Gather with the reason (a CastLike reading a member for its dtype needs none),
    and the function is unchanged."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from lowbit.config import PerEmbeddingGroup, QuantSpec
    from lowbit.passes.onnx import Site

    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, 8)).astype(np.float32)
    gain = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["x"]),
         helper.make_node("Mul", ["x", "g"], ["h"]),
         helper.make_node("CastLike", ["h", "x"], ["h2"]),      # reads x's dtype only
         helper.make_node("Softsign", ["h2"], ["t"]),
         helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
         helper.make_node("MatMul", ["t", "Et"], ["logits"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4, 10])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(gain, "g")])
    proto = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    model = ir.serde.deserialize_model(proto)
    ref = OrtRunner(proto.SerializeToString())
    h = next(n for n in model.graph if n.op_type == "Mul").outputs[0]
    spec = QuantSpec(bits=8, symmetric=False, granularity=PerEmbeddingGroup(2, permute=True))
    lo = torch.from_numpy(-np.abs(gain) * 3)
    ranges = {"h": (lo, -lo)}
    report = PegPermute((Site("h", spec, h),), ranges)(model)
    whys = sorted(why for _, why in report.gathers)
    assert len(whys) == 2, whys
    assert whys[0].startswith("E is shared: also read by") and "Softsign" in whys[1]
    assert report.families[0]["params"] == 1                 # the gain
    feed = {"ids": rng.integers(0, 10, (2, 4))}
    np.testing.assert_allclose(OrtRunner(ir.to_proto(model)).run(feed)[0], ref.run(feed)[0],
                               rtol=1e-6, atol=1e-6)
