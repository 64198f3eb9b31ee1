"""QuantizeTTHalves: a materialized TT layer's two linears both get the recipe's quantizers
(spotting gives at most one of them the role), so W8A8 covers every TT half; on the tiny
BERT (hidden 64, 2 layers, seeded) the TVM module then runs all 24 halves on int8 kernels and
agrees with the fake-quant graph.
* structure: every tt_a / tt_b linear reads a dequantized int8 weight and a static u8 input;
  honest ``modified``, idempotent, a graph without TT layers untouched; an ignored role's
  halves stay float;
* numbers: the quantized TT graph stays near the float TT graph (W8A8_SQNR_DB); TVM vs FX
  within TVM_ATOL of the output scale."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lowbit
from lowbit.config import TT
from lowbit.passes.fx.insert_fake_quant import InsertFakeQuant
from lowbit.passes.fx.quantize_tt import QuantizeTTHalves
from lowbit.testing import assert_idempotent, assert_untouched, sqnr

transformers = pytest.importorskip("transformers")

W8A8_SQNR_DB = 25.0   # W8A8 on rank-8 TT halves vs the float TT graph (measured ~33 dB)
TVM_ATOL = 1e-5       # TVM integer kernels vs the fake-quant graph, relative to max |y|
                      # (measured 2e-7: the same integers, float epilogues in another order)
QD = "quantized_decomposed."


@pytest.fixture(scope="module")
def tt():
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 100, (2, 16)),
              "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(3)]
    gm = lowbit.capture(model, calib[0])
    plain = lowbit.materialize_tt(lowbit.tensor_train(gm, TT(ranks=8), progress=False))
    return gm, plain, calib


def _halves(q):
    """tt_a / tt_b linear nodes of a converted graph -> (weight producer, input producer)."""
    out = {}
    for n in q.graph.nodes:
        if n.op == "call_function" and "linear" in str(n.target):
            w = n.args[1]
            src = w.args[0] if w.op == "call_function" else w
            name = str(getattr(src, "target", "")).removesuffix("_i8")   # ConvertToQDQ's int8
            if name.endswith(("tt_a", "tt_b")):
                out[name] = (str(w.target), str(n.args[0].target))
    return out


def test_every_half_quantized(tt):
    _, plain, calib = tt
    q = lowbit.quantize(plain, lowbit.recipes.W8A8, calibration=calib, progress=False)
    halves = _halves(q)
    assert len(halves) == 2 * 6 * 2
    assert set(halves.values()) == {(QD + "dequantize_per_channel.default",
                                     QD + "dequantize_per_tensor.default")}
    report = {name: mod for name, mod, _ in q.meta["lowbit_pipeline"].steps}
    assert report["QuantizeTTHalves"]       # spotting alone leaves halves float


def test_ignored_role_stays_float(tt):
    _, plain, calib = tt
    recipe = lowbit.recipes.W8A8.replace(name="W8A8_noq", ignore=("attn.q",))
    q = lowbit.quantize(plain, recipe, calibration=calib, progress=False)
    float_halves = [k for k, (w, _) in _halves(q).items() if "dequantize" not in w]
    assert sorted(float_halves) == sorted(f"encoder.layer.{i}.attention.self.query.{h}"
                                          for i in range(2) for h in ("tt_a", "tt_b"))


def test_structure_contract(tt):
    gm, plain, _ = tt
    assert_untouched(QuantizeTTHalves(lowbit.recipes.W8A8), gm)      # no TT layer
    prepared = copy.deepcopy(plain)
    InsertFakeQuant(lowbit.recipes.W8A8)(prepared)
    assert_idempotent(QuantizeTTHalves(lowbit.recipes.W8A8), prepared)


def test_numbers_and_tvm(tt):
    _, plain, calib = tt
    q = lowbit.quantize(plain, lowbit.recipes.W8A8, calibration=calib, progress=False)
    for b in calib:
        ref = plain(**b).last_hidden_state.detach()
        assert sqnr(ref, q(**b).last_hidden_state.detach()) > W8A8_SQNR_DB
    mod = lowbit.compile(q, target="cpu")
    kinds = [k for _, k in mod.meta["lowering"]]
    assert sum(k.startswith("linear_u8s8") for k in kinds) == 24, kinds
    for b in calib:
        want = q(**b).last_hidden_state.detach().numpy()
        got = mod(**b)[0].numpy()
        assert np.abs(got - want).max() <= TVM_ATOL * np.abs(want).max()
