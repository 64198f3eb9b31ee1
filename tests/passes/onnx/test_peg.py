"""PEG activations in ONNX (InsertQDQ + calibrate): per-axis QuantizeLinear/DequantizeLinear
along the hidden axis that onnxruntime runs.

Structure: W8A8_PEG-style recipes (K=4 here: the tiny BERT's hidden size is 64) put per-axis
Q/DQ pairs (axis 2 of [batch, seq, hidden]) at the FFN inputs, FFN outputs and residual sums
(2 blocks x 4 = 8 of W8A8_FULL's 16 activation sites), with K distinct scales each; the other
sites stay per tensor. A K that does not divide the hidden size is refused. Numbers: the model
runs in onnxruntime (over an SQNR floor against float), computes what FX computes when the
grouping is the same, and its scale vectors equal FX's (same observers, same
``lowbit.quant.peg`` grouping).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.errors import ConfigError
from lowbit.passes.onnx import (
    InsertQDQ,
    calibrate,
    find_transformer,
    load_onnx,
    plan_sites,
    upgrade_opset,
)
from lowbit.recipes import peg_recipe
from lowbit.testing import op_counts, sqnr

pytest.importorskip("transformers")

import onnx_test_models as M  # conftest.py puts this folder on sys.path

K = 4
# SQNR vs float in onnxruntime: measured 29.3 (permuted) / 32.8 dB (in place) on one batch.
# Both sit under per-tensor W8A8_FULL (36.0 dB) here: 4 calibration batches of 16 tokens give
# per-channel ranges that new data exceeds, and tight groups clip it (see docs/accuracy.md).
SQNR_FLOOR = 26.0
# ONNX calibrates on onnxruntime's tensors, FX on torch's: their kernels sum in other orders
# (and differently per host), so ranges and scales differ by float rounding: measured max
# relative difference 1.9e-7 on a Zen 5 (AVX-512), 2.5e-7 under qemu -cpu EPYC-Milan (AVX2).
SCALE_RTOL = 1e-5


@pytest.fixture(scope="module")
def bert() -> ir.Model:
    model = load_onnx(M.onnx_file("bert"))
    ir.external_data.load_to_model(model)
    upgrade_opset(model, 21)
    return model


def _quantized(model, recipe):
    plan = plan_sites(find_transformer(model), recipe)
    qparams = calibrate(model, plan.static(), M.batches(4), runner=OrtRunner, progress=False)
    return InsertQDQ(recipe, qparams)(model.clone()).graph, qparams


@pytest.mark.parametrize("permute", [True, False])
def test_peg_qdq_structure_and_runs(bert, permute):
    q, _ = _quantized(bert, peg_recipe(K, permute))
    per_axis = [n for n in q.graph if n.op_type == "QuantizeLinear"
                and n.attributes.get_int("axis", 1) == 2]
    assert len(per_axis) == 8
    assert op_counts(q)["QuantizeLinear"] == 16          # as W8A8_FULL: same sites
    for n in per_axis:
        scale = n.inputs[1].const_value.numpy()
        assert scale.shape == (64,) and len(np.unique(scale)) <= K
    ref = OrtRunner(M.onnx_file("bert"))
    runner = OrtRunner(ir.to_proto(q), optimization="disable")   # the QDQ math, any host
    for b in M.batches(2, seed=500):
        assert sqnr(ref.run(b)[0], runner.run(b)[0]) >= SQNR_FLOOR


def test_ort_equals_fx(bert):
    """Channel groups in place (no permutation to fold): the ONNX QDQ graph in onnxruntime
    computes what the FX graph computes (rounding ties aside)."""
    import lowbit

    recipe = peg_recipe(K, permute=False)
    q, _ = _quantized(bert, recipe)
    gm = lowbit.capture(M.tiny_bert(), M.batches(1)[0], dynamic=True)
    fx = lowbit.quantize(gm, recipe, calibration=M.batches(4), progress=False)
    runner = OrtRunner(ir.to_proto(q), optimization="disable")   # the QDQ math, any host
    for b in M.batches(2, seed=500):
        assert sqnr(fx(**b).last_hidden_state.detach().numpy(), runner.run(b)[0]) >= 60.0


def test_k_must_divide_hidden(bert):
    with pytest.raises(ConfigError, match=r"groups=6\) does not divide the hidden size 64"):
        plan_sites(find_transformer(bert), peg_recipe(6))


def test_scales_match_fx(bert):
    """Same data, same observers and grouping: ONNX's PEG scales are FX's (float rounding)."""
    import torch

    import lowbit
    from lowbit.passes.fx.insert_fake_quant import fake_quant_nodes
    from lowbit.quantize import calibrate as fx_calibrate
    from lowbit.quantize import prepare

    recipe = peg_recipe(K, permute=True)
    _, qparams = _quantized(bert, recipe)
    gm = lowbit.capture(M.tiny_bert(), M.batches(1)[0])
    prepared = prepare(gm, recipe)
    fx_calibrate(prepared, M.batches(4), progress=False)
    checked = 0
    for n in fake_quant_nodes(prepared):
        fq = prepared.get_submodule(n.target)
        if fq.is_peg and fq.site in qparams:
            fq.freeze()
            torch.testing.assert_close(qparams[fq.site][0], fq.scale, rtol=SCALE_RTOL, atol=0)
            checked += 1
    assert checked == 8


def test_site_agreement_at_peg_sites(tmp_path):
    """site_agreement checks PEG sites too: per-channel parameters element by element, and the
    integers onnxruntime's per-axis QuantizeLinear writes against torch's."""
    import onnx

    import lowbit
    from lowbit.backends.onnxruntime import export_onnx
    from lowbit.backends.site_agreement import site_agreement
    from lowbit.errors import LowbitError

    gm = lowbit.capture(M.tiny_bert(), M.batches(1)[0], dynamic=True)
    q = lowbit.quantize(gm, peg_recipe(K, permute=True), calibration=M.batches(4),
                        progress=False)
    path = export_onnx(q, tmp_path / "peg.onnx", ((), M.batches(1)[0]))
    rep = site_agreement(q, path, M.batches(1, seed=9)[0])
    assert len(rep.sites) == 16 and sum("per_channel" in s for s in rep.sites) == 8
    assert rep.worst_diff <= 1 and rep.worst_fraction <= 1e-3, str(rep)
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    init = next(inits[n.input[1]] for n in proto.graph.node if n.op_type == "QuantizeLinear"
                and n.input[1] in inits and list(inits[n.input[1]].dims) == [64])
    arr = onnx.numpy_helper.to_array(init).copy()
    arr[5] *= 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(LowbitError, match="quantizes with"):
        site_agreement(q, tmp_path / "bad.onnx", M.batches(1, seed=9)[0])
