"""SmoothQuantScales and FoldChannelScales over ONNX: exact folding in onnxruntime, structure,
refusals with reasons, and parity with the FX passes (the numerics are shared:
``lowbit.quant.smoothing``).

Tiny GPT-2 (LayerNormalization, HF Conv1D as Gemm [K, N]), Llama (decomposed RMSNorm, MatMul
[K, N]) with log-normal norm gains (outlier channels; distinct tensors, so the exporter dedups
no norm weight), the same Llama rewritten into Gemma's ``x * (1 + w)`` norm form, the
conftest BERT (post-LN: nothing folds), and small hand-made graphs. Tolerances: rtol and atol
1e-5 on logits up to |4.3| (measured max difference 2.4e-6: fp32 rounding of the folded
parameters); parity of the chosen scales with FX: 1e-5 relative (observed values differ by
float rounding between torch and onnxruntime kernels, see test_parity.py).
"""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.capture import capture
from lowbit.errors import ConfigError
from lowbit.passes.fx.smoothquant import SmoothQuantScales as FxSmoothQuantScales
from lowbit.passes.fx.smoothquant import channel_absmax as fx_channel_absmax
from lowbit.passes.onnx import (
    FoldChannelScales,
    SmoothQuantScales,
    channel_absmax,
    find_transformer,
    load_onnx,
    smoothquant,
)
from lowbit.passes.onnx.edit import add_initializer, drop_if_unused
from lowbit.passes.onnx.fold_channel_scales import insert_scale_pair, scale_pairs
from lowbit.passes.onnx.graph_utils import const_array

pytest.importorskip("transformers")

import onnx_test_models as M  # conftest.py puts this folder on sys.path

RTOL = ATOL = 1e-5
PARITY_RTOL = 1e-5
CALIB = M.batches(3)
FEED = M.inputs(batch=2, seed=7)
_TMP = tempfile.TemporaryDirectory(prefix="lowbit-sq-tests-")


def _randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or "LayerNorm" in name:
                p.copy_(torch.exp(1.2 * torch.randn(p.shape, generator=gen))
                        if name.endswith("weight") else 0.3 * torch.randn(p.shape, generator=gen))
    return model


@functools.cache
def _torch_model(family: str) -> torch.nn.Module:
    base = M.tiny_gpt2() if family == "gpt2" else M.tiny_llama()
    return _randomise_norms(copy.deepcopy(base)).eval()


@functools.cache
def _path(family: str) -> Path:
    return M.export_dynamo(_torch_model(family), M.inputs(), Path(_TMP.name) / f"{family}.onnx")


def _load(path) -> ir.Model:
    model = load_onnx(path)
    ir.external_data.load_to_model(model)   # in memory: the tests run it from bytes
    return model


def _gemma_form(model: ir.Model) -> ir.Model:
    """Rewrite every RMSNorm weight w into Add(w - 1, 1): Gemma's ``x * (1 + w)`` form."""
    g = model.graph
    one = add_initializer(g, "one", np.array(1.0, np.float32), ir.DataType.FLOAT)
    for _, ref in find_transformer(model).norms():
        w = g.initializers[ref.weight]
        w_m1 = add_initializer(g, f"{ref.weight}_m1", const_array(w) - 1, ir.DataType.FLOAT)
        add = ir.Node("", "Add", [w_m1, one], name=f"{ref.weight}/plus1")
        add.outputs[0].name, add.outputs[0].type = f"{ref.weight}_p1", w.type
        add.outputs[0].shape = ir.Shape(w.shape)
        readers = [u.node for u in w.uses()]
        g.insert_before(next(n for n in g if n in readers), add)
        for r in readers:
            for i, v in enumerate(r.inputs):
                if v is w:
                    r.replace_input_with(i, add.outputs[0])
        drop_if_unused(g, w)
    return model


def _model(family: str) -> ir.Model:
    if family == "gemma_form":
        return _gemma_form(_load(_path("llama")))
    if family in ("gpt2", "llama"):
        return _load(_path(family))
    return _load(M.onnx_file(family.removesuffix("_plain")))     # the conftest exports


def _run(model: ir.Model, feed=FEED) -> np.ndarray:
    return OrtRunner(ir.to_proto(model).SerializeToString(), optimization="basic").run(feed)[0]


def _counts(model: ir.Model) -> dict:
    out: dict = {}
    for n in model.graph:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma_form"])
def folded(request):
    model = _model(request.param)
    before = _bytes(model)
    out, report = smoothquant(model, CALIB, runner=OrtRunner, alpha=0.5)
    assert _bytes(model) == before                     # the input model is cloned
    return request.param, model, out, report


def test_folds_exactly_in_onnxruntime(folded):
    _, model, out, report = folded
    assert len(report.done) == 4 and not report.kept and report.modified
    refused = dict(report.refused)
    assert len(refused) == 4                            # attn.o and ffn.out, per block
    assert all("attention context" in why for s, why in refused.items() if "attn.o" in s)
    assert all("FFN activation" in why for s, why in refused.items() if "ffn.out" in s)
    np.testing.assert_allclose(_run(out), _run(model), rtol=RTOL, atol=ATOL)


def test_structure_pairs_gone_counts_unchanged(folded):
    _, model, out, _ = folded
    assert scale_pairs(out.graph) == []
    assert not [n for n in out.graph.initializers if n.startswith("lowbit_scale_")]
    assert len(out.graph.initializers) == len(model.graph.initializers)
    assert _counts(out) == _counts(model)


def test_pairs_alone_are_identity_then_idempotent_passes(folded):
    _, model, _, _ = folded
    work = model.clone()
    sq = SmoothQuantScales(channel_absmax(work, CALIB, runner=OrtRunner))(work)
    assert sq.modified and len(sq.done) == 4 and len(scale_pairs(work.graph)) == 4
    counts = _counts(work)
    assert (counts["Div"] - _counts(model).get("Div", 0), counts["Mul"] - _counts(model)["Mul"]) \
        == (4, 4)
    np.testing.assert_allclose(_run(work), _run(model), rtol=RTOL, atol=ATOL)
    absmax = channel_absmax(model, CALIB, runner=OrtRunner)
    again = SmoothQuantScales(absmax)(work)   # positions carry pairs
    assert not again.modified and not again.done
    fold = FoldChannelScales()(work)
    assert fold.modified and len(fold.done) == 4 and not fold.refused
    after = _bytes(work)
    assert not FoldChannelScales()(work).modified and _bytes(work) == after


def test_fold_math_gpt2_layernorm_and_conv1d_gemm():
    model = _model("gpt2")
    work = model.clone()
    SmoothQuantScales(channel_absmax(work, CALIB, runner=OrtRunner))(work)
    a = const_array(work.graph.initializers["lowbit_scale_transformer_h_0_attn_c_attn"])
    FoldChannelScales()(work)
    a64 = a.astype(np.float64)
    init = {k: const_array(v) for k, v in model.graph.initializers.items()}
    new = {k: const_array(v) for k, v in work.graph.initializers.items()}
    p = "transformer.h.0."
    np.testing.assert_allclose(new[p + "ln_1.weight"], init[p + "ln_1.weight"] / a64, rtol=1e-6)
    np.testing.assert_allclose(new[p + "ln_1.bias"], init[p + "ln_1.bias"] / a64, rtol=1e-6)
    w = init[p + "attn.c_attn.weight"]                  # [K, N] (Conv1D): rows times a
    np.testing.assert_allclose(new[p + "attn.c_attn.weight"], w * a64[:, None], rtol=1e-6)


def test_gemma_offset_weight():
    model = _model("gemma_form")
    assert {n.weight_offset for _, n in find_transformer(model).norms()} == {1.0}
    work = model.clone()
    SmoothQuantScales(channel_absmax(work, CALIB, runner=OrtRunner))(work)
    name = "model.layers.0.input_layernorm.weight_m1"
    a = const_array(work.graph.initializers["lowbit_scale_model_layers_0_self_attn_q_proj"])
    w = const_array(work.graph.initializers[name]).astype(np.float64)
    FoldChannelScales()(work)
    np.testing.assert_allclose(const_array(work.graph.initializers[name]), (1 + w) / a - 1,
                               rtol=1e-6, atol=1e-7)


def test_post_ln_bert_is_refused_and_untouched():
    model = _model("bert")
    before = _bytes(model)
    report = SmoothQuantScales(channel_absmax(model, CALIB, runner=OrtRunner))(model)
    assert not report.modified and not report.done and _bytes(model) == before
    refused = dict(report.refused)
    assert len(refused) == 8
    stream = sorted(s.split(" <- ")[0] for s, why in refused.items() if "residual stream" in why)
    assert stream == ["attn.q/attn.k/attn.v"] * 2 + ["ffn.in"] * 2
    assert not FoldChannelScales()(model).modified and _bytes(model) == before


def test_partial_fold_on_bert_keeps_divisions_exactly():
    model = _model("bert")
    work = model.clone()
    sq = SmoothQuantScales(channel_absmax(work, CALIB, runner=OrtRunner), explicit=True)(work)
    assert len(sq.kept) == 8 and not sq.refused
    fold = FoldChannelScales(partial=True)(work)
    assert len(fold.kept) == 8 and not fold.done and not fold.refused
    assert [mul for _, mul in scale_pairs(work.graph)] == [None] * 8
    np.testing.assert_allclose(_run(work), _run(model), rtol=RTOL, atol=ATOL)


def test_shared_initializers_are_refused():
    """The conftest GPT-2 keeps its all-ones LayerNorm gains, which the exporter dedups into
    one initializer; SharedBlocks reads every weight from two linears."""
    absmax = channel_absmax(_model("gpt2_plain"), CALIB, runner=OrtRunner)
    report = SmoothQuantScales(absmax)(_model("gpt2_plain"))
    assert not report.done
    assert any("shared" in why and "ln_" in why for _, why in report.refused)
    shared = _load(M.onnx_file("shared"))
    x = {"x": torch.randn(1, M.SEQ, 32, generator=torch.Generator().manual_seed(0))}
    report = SmoothQuantScales(channel_absmax(shared, [x], runner=OrtRunner))(shared)
    assert not report.modified and report.refused
    assert all("shared" in why for _, why in report.refused if "cannot absorb 1/a" not in why)


class _Chain(torch.nn.Module):
    """fc1 -> fc2 directly: 1/a folds into fc1's output channels and bias."""

    def __init__(self, d: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

    def forward(self, x):
        return self.fc2(self.fc1(x))


@pytest.mark.parametrize("shape", [(2, 3, 16), (2, 16)], ids=["matmul_add", "gemm_transB"])
def test_linear_producer_rows_and_bias(shape):
    """3-D input: MatMul [K, N] + bias Add; 2-D input: Gemm(x, W [N, K], b, transB=1)."""
    path = Path(_TMP.name) / f"chain{len(shape)}.onnx"
    torch.onnx.export(_Chain().eval(), (torch.randn(*shape),), str(path), dynamo=True,
                      input_names=["x"])
    model = _load(path)
    assert {n.op_type for n in model.graph} == ({"MatMul", "Add"} if len(shape) == 3 else {"Gemm"})
    work = model.clone()
    fc2 = next(n for n in work.graph if n.op_type in ("MatMul", "Gemm")
               and n.inputs[0].producer() is not None)
    y = fc2.inputs[0]
    insert_scale_pair(work.graph, y, {fc2}, "fc2", np.logspace(-1, 1, 32, dtype=np.float32))
    report = FoldChannelScales()(work)
    assert report.done == ["lowbit_scale_fc2"] and not report.refused
    assert not FoldChannelScales()(work).modified
    assert len(work.graph.initializers) == len(model.graph.initializers)
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    np.testing.assert_allclose(_run(work, feed), _run(model, feed), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scales_agree_with_fx(family):
    """Same model, same calibration batches: ONNX and FX choose the same scales."""
    gm = capture(_torch_model(family), M.inputs(batch=2), dynamic=True)
    fx_absmax = fx_channel_absmax(gm, CALIB)
    FxSmoothQuantScales(fx_absmax, alpha=0.5)(gm)
    fx_scales = {n: p.detach().numpy() for n, p in gm.named_parameters()
                 if n.startswith("lowbit_scale_")}
    model = _model(family)
    absmax = channel_absmax(model, CALIB, runner=OrtRunner)
    assert sorted(absmax) == sorted(fx_absmax)
    SmoothQuantScales(absmax, alpha=0.5)(model)
    onnx_scales = {n: const_array(v) for n, v in model.graph.initializers.items()
                   if n.startswith("lowbit_scale_")}
    assert sorted(onnx_scales) == sorted(fx_scales) and len(fx_scales) == 4
    for name, a in fx_scales.items():
        np.testing.assert_allclose(onnx_scales[name], a, rtol=PARITY_RTOL, atol=0)


def test_missing_calibration_and_bad_options():
    model = _model("llama")
    absmax = {k: v for k, v in channel_absmax(model, CALIB, runner=OrtRunner).items()
              if "layers.1" not in k}
    report = SmoothQuantScales(absmax)(model)
    assert len(report.done) == 2
    assert any("no calibrated absmax" in why for _, why in report.refused)
    with pytest.raises(ConfigError, match="alpha"):
        SmoothQuantScales(absmax, alpha=-0.1)
    with pytest.raises(ConfigError, match="absmax"):
        SmoothQuantScales([1, 2])
