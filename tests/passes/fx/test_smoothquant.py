"""SmoothQuantScales: closed-form scales, which positions are foldable, and why others are not.

Tiny GPT-2 (pre-LN, Conv1D), Llama (pre-LN, RMSNorm, gated MLP) and BERT (post-LN), random
weights, seeded token batches. Exactness of folding is tested in test_fold_channel_scales.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError
from lowbit.passes.fx.fold_channel_scales import FoldChannelScales, scale_pairs
from lowbit.passes.fx.smoothquant import SmoothQuantScales, channel_absmax, smoothquant
from lowbit.testing import assert_equivalent, assert_idempotent, assert_untouched, sqnr

transformers = pytest.importorskip("transformers")

VOCAB = 1000
IDS = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
CALIB = [(torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(i)),)
         for i in range(1, 5)]
ATOL = 1e-5   # fp32 graphs vs each other on logits up to |4| (see test_fold_channel_scales)


def _capture(family: str) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, use_cache=False,
            bos_token_id=0, eos_token_id=0))
    elif family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64,
            use_cache=False))
    else:
        model = transformers.BertModel(transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=VOCAB))
    with torch.no_grad():     # log-normal norm gains: outlier channels, as in trained models
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if ("norm" in name or ".ln_" in name or "LayerNorm" in name) and "weight" in name:
                p.copy_(torch.exp(1.2 * torch.randn(p.shape, generator=gen)))
    return lowbit.capture(model.eval(), (IDS,))


@pytest.fixture(scope="module")
def gpt2():
    gm = _capture("gpt2")
    return gm, channel_absmax(gm, CALIB)


@pytest.fixture(scope="module")
def llama():
    gm = _capture("llama")
    return gm, channel_absmax(gm, CALIB)


@pytest.fixture(scope="module")
def bert():
    gm = _capture("bert")
    return gm, channel_absmax(gm, CALIB)


def _logits(gm, ids=IDS) -> torch.Tensor:
    out = gm(ids)
    return out[0] if isinstance(out, (tuple, list)) else out.logits


def test_channel_absmax_is_the_running_max(gpt2):
    gm, absmax = gpt2
    first = channel_absmax(gm, CALIB[:1])
    rest = channel_absmax(gm, CALIB[1:])
    name = "transformer.h.0.attn.c_attn"
    assert absmax[name].shape == (64,)
    torch.testing.assert_close(absmax[name], torch.maximum(first[name], rest[name]),
                               rtol=0, atol=0)
    assert "transformer.h.1.mlp.c_proj" in absmax and absmax["transformer.h.1.mlp.c_proj"].shape \
        == (256,)


def test_closed_form_scale_conv1d(gpt2):
    gm, absmax = gpt2
    work = copy.deepcopy(gm)
    SmoothQuantScales(absmax, alpha=0.5)(work)
    a = work.get_parameter("lowbit_scale_transformer_h_0_attn_c_attn")
    w = gm.get_parameter("transformer.h.0.attn.c_attn.weight").detach().abs()   # [in, out]
    expect = absmax["transformer.h.0.attn.c_attn"].double().sqrt() / w.double().amax(1).sqrt()
    torch.testing.assert_close(a.double(), expect, rtol=1e-6, atol=0)


def test_closed_form_scale_shares_one_a_over_q_k_v(llama):
    gm, absmax = llama
    work = copy.deepcopy(gm)
    alpha = 0.75
    SmoothQuantScales(absmax, alpha=alpha)(work)
    a = work.get_parameter("lowbit_scale_model_layers_0_self_attn_q_proj").double()
    p = "model.layers.0.self_attn."
    w = torch.cat([gm.get_parameter(p + f"{r}_proj.weight").detach().abs()
                   for r in "qkv"]).double().amax(0)                              # [out, in]
    x = absmax[p + "q_proj"].double()
    torch.testing.assert_close(a, x ** alpha / w ** (1 - alpha), rtol=1e-6, atol=0)


def test_pre_ln_positions_and_refusals(llama):
    gm, absmax = llama
    out = assert_idempotent(SmoothQuantScales(absmax), gm)
    report = SmoothQuantScales(absmax)(copy.deepcopy(gm))
    assert report.done == [
        "attn.q/attn.k/attn.v <- model.layers.0.self_attn.q_proj",
        "ffn.in/ffn.gate <- model.layers.0.mlp.up_proj",
        "attn.q/attn.k/attn.v <- model.layers.1.self_attn.q_proj",
        "ffn.in/ffn.gate <- model.layers.1.mlp.up_proj"]
    refused = dict(report.refused)
    assert len(refused) == 4                       # attn.o and ffn.out, per block
    assert "attention context" in refused["attn.o <- model.layers.0.self_attn.o_proj"]
    assert "FFN activation" in refused["ffn.out <- model.layers.1.mlp.down_proj"]
    assert len(scale_pairs(out)) == 4
    assert_equivalent(gm, out, (IDS,), rtol=1e-5, atol=ATOL)   # pairs alone: identity


def test_post_ln_bert_is_refused_and_untouched(bert):
    gm, absmax = bert
    assert_untouched(SmoothQuantScales(absmax), gm)
    refused = dict(SmoothQuantScales(absmax)(copy.deepcopy(gm)).refused)
    assert len(refused) == 8
    stream = [s for s, why in refused.items() if "residual stream" in why]
    assert sorted(s.split(" <- ")[0] for s in stream) == ["attn.q/attn.k/attn.v"] * 2 + [
        "ffn.in"] * 2
    assert any("gelu" in why for why in refused.values())


def test_missing_calibration_and_bad_alpha_are_refused(gpt2):
    gm, absmax = gpt2
    partial = {k: v for k, v in absmax.items() if "h.1" not in k}
    report = SmoothQuantScales(partial)(copy.deepcopy(gm))
    assert len(report.done) == 2
    assert any("no calibrated absmax" in why for _, why in report.refused)
    with pytest.raises(ConfigError, match="alpha"):
        SmoothQuantScales(absmax, alpha=1.5)
    with pytest.raises(ConfigError, match="absmax"):
        SmoothQuantScales([1, 2])


def test_smoothquant_helper_folds_and_stays_equivalent(llama):
    gm, _ = llama
    out, report = smoothquant(gm, CALIB, alpha=0.5)
    assert len(report.done) == 4 and not report.kept and scale_pairs(out) == []
    assert_equivalent(gm, out, (IDS,), rtol=1e-5, atol=ATOL)
    assert sum(p.numel() for p in out.parameters()) == sum(p.numel() for p in gm.parameters())


def test_after_prepare_explicit_scales_improve_w8a8(llama, bert):
    """SmoothQuant on a prepared graph: pairs go in front of the activation quantizers;
    a partial fold keeps y / a where the producer cannot absorb it (BERT: all positions)."""
    for gm, absmax in (llama, bert):
        prepared = lowbit.prepare(gm, lowbit.recipes.W8A8)
        SmoothQuantScales(absmax, explicit=True)(prepared)
        fold = FoldChannelScales(partial=True)(prepared)
        assert len(fold.done) + len(fold.kept) == 8 and not fold.refused
        assert_equivalent(gm, prepared, (IDS,), rtol=1e-5, atol=ATOL)   # observers: float
    gm, absmax = llama
    base = lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=CALIB, progress=False)
    prepared = lowbit.prepare(gm, lowbit.recipes.W8A8)
    SmoothQuantScales(absmax)(prepared)
    FoldChannelScales()(prepared)
    lowbit.calibrate(prepared, CALIB, progress=False)
    smooth = lowbit.convert(prepared)
    ref = _logits(gm)
    assert sqnr(ref, _logits(smooth)) > sqnr(ref, _logits(base)) + 3     # dB; measured +9
