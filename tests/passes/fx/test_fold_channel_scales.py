"""FoldChannelScales: scale pairs (y / a) * a folded into norms / linears, exactly in fp32.

Tiny GPT-2 (LayerNorm, HF Conv1D), Llama (RMSNorm) and Gemma 3 (RMSNorm (1 + w)) with random
weights; norm parameters are randomised too (log-normal gains, so a few channels are
outliers as in trained models) and the pairs carry SmoothQuant scales spanning more than a
decade. Tolerance: rtol 1e-5 and
ATOL = 1e-5 (named, see below) on logits up to |3.7|; and the stronger check: against a
float64 run of the eager model, the folded fp32 graph is within 2x of the original fp32
graph's own rounding error (measured 0.6e-6 .. 2.9e-6 vs 0.8e-6 .. 2.5e-6): folding adds
nothing but fp32 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.passes.fx.fold_channel_scales import (
    SCALE_PREFIX,
    FoldChannelScales,
    insert_scale_pair,
    scale_pairs,
)
from lowbit.passes.fx.smoothquant import SmoothQuantScales, channel_absmax
from lowbit.testing import assert_equivalent, assert_idempotent, assert_untouched, op_counts

transformers = pytest.importorskip("transformers")

VOCAB, RTOL = 1000, 1e-5
# The fp32 graphs themselves differ from float64 by up to 2.5e-6 on these logits (|logit| <= 3.7);
# 1e-6 would test fp32 rounding, not the rewrite.
ATOL = 1e-5
IDS = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


def _randomise_norms(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or "LayerNorm" in name:
                if name.endswith("weight"):   # log-normal gains: a few outlier channels
                    offset = 1.0 if isinstance(model, _gemma_cls()) else 0.0
                    p.copy_(torch.exp(1.2 * torch.randn(p.shape, generator=gen)) - offset)
                else:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _gemma_cls():
    from transformers.models.gemma3 import Gemma3ForCausalLM

    return Gemma3ForCausalLM


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                      n_positions=64, use_cache=False, bos_token_id=0,
                                      eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    if family == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128,
                                       vocab_size=VOCAB, max_position_embeddings=64,
                                       use_cache=False)
        return transformers.LlamaForCausalLM(cfg)
    if family == "gemma3":
        from transformers.models.gemma3 import Gemma3TextConfig

        cfg = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=1, head_dim=16, intermediate_size=128,
                               vocab_size=VOCAB, max_position_embeddings=64, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention"],
                               use_cache=False)
        return _gemma_cls()(cfg)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB)
    return transformers.BertModel(cfg)


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def scaled(request):
    """(family, float graph, graph with SmoothQuant pairs, SmoothQuant report, fp64 logits)."""
    model = _randomise_norms(_model(request.param)).eval()
    gm = lowbit.capture(model, (IDS,))
    absmax = channel_absmax(gm, [(IDS,)])
    work = copy.deepcopy(gm)
    report = SmoothQuantScales(absmax, alpha=0.5)(work)
    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(IDS).logits
    return request.param, gm, work, report, ref64


def _logits(gm) -> torch.Tensor:
    with torch.no_grad():
        out = gm(IDS)
    return (out[0] if isinstance(out, (tuple, list)) else out.logits).double()


def _n_params(gm) -> int:
    return sum(p.numel() for p in gm.parameters())


def test_pairs_fold_exactly_and_vanish(scaled):
    family, gm, work, sq, ref64 = scaled
    assert len(sq.done) == 4, sq            # attn_norm -> q/k/v and ffn_norm -> up/gate, x2
    assert len(scale_pairs(work)) == 4
    spread = [float(p.max() / p.min()) for n, p in work.named_parameters()
              if n.startswith(SCALE_PREFIX)]
    assert max(spread) > 10, spread         # the scales are far from 1: a real test
    folded = assert_idempotent(FoldChannelScales(), work)
    assert scale_pairs(folded) == []
    assert not any(n.startswith(SCALE_PREFIX) for n, _ in folded.named_parameters())
    assert _n_params(folded) == _n_params(gm)
    counts, ref = op_counts(folded), op_counts(gm)
    assert counts == ref, family            # exactly the float graph's ops again
    assert_equivalent(gm, folded, (IDS,), rtol=RTOL, atol=ATOL)
    err_fp32 = (_logits(gm) - ref64).abs().max()
    assert (_logits(folded) - ref64).abs().max() <= 2 * err_fp32


def test_fold_math_on_gpt2_layernorm_and_conv1d():
    gm = lowbit.capture(_randomise_norms(_model("gpt2")).eval(), (IDS,))
    work = copy.deepcopy(gm)
    SmoothQuantScales(channel_absmax(gm, [(IDS,)]), alpha=0.5)(work)
    a = work.get_parameter("lowbit_scale_transformer_h_0_attn_c_attn").detach().clone()
    report = FoldChannelScales()(work)
    assert report.modified and not report.refused
    p0, p1 = dict(gm.named_parameters()), dict(work.named_parameters())
    name = "transformer.h.0.ln_1."
    torch.testing.assert_close(p1[name + "weight"], p0[name + "weight"] / a, rtol=1e-6, atol=0)
    torch.testing.assert_close(p1[name + "bias"], p0[name + "bias"] / a, rtol=1e-6, atol=0)
    w = "transformer.h.0.attn.c_attn.weight"     # Conv1D [in, out]: input rows scale by a
    torch.testing.assert_close(p1[w], p0[w] * a[:, None], rtol=1e-6, atol=0)


def test_gemma_offset_weight():
    gm = lowbit.capture(_randomise_norms(_model("gemma3")).eval(), (IDS,))
    work = copy.deepcopy(gm)
    SmoothQuantScales(channel_absmax(gm, [(IDS,)]), alpha=0.5)(work)
    a = work.get_parameter("lowbit_scale_model_layers_0_self_attn_q_proj").detach().clone()
    FoldChannelScales()(work)
    name = "model.layers.0.input_layernorm.weight"
    w0, w1 = gm.get_parameter(name), work.get_parameter(name)
    torch.testing.assert_close(1 + w1, (1 + w0) / a, rtol=1e-6, atol=1e-7)


# ---- refusals ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_explicit():
    gm = lowbit.capture(_randomise_norms(_model("bert")).eval(), (IDS,))
    work = copy.deepcopy(gm)
    sq = SmoothQuantScales(channel_absmax(gm, [(IDS,)]), explicit=True)(work)
    return gm, work, sq


def test_post_ln_pairs_are_refused_with_reasons(bert_explicit):
    _, work, sq = bert_explicit
    assert len(sq.kept) == 8 and not sq.refused        # q/k/v, o, ffn.in, ffn.out per block
    assert_untouched(FoldChannelScales(), work)
    report = FoldChannelScales()(copy.deepcopy(work))
    reasons = dict(report.refused)
    assert len(reasons) == 8
    assert any("residual stream" in r for r in reasons.values())
    assert any("gelu" in r for r in reasons.values())


def test_partial_fold_keeps_explicit_divisions(bert_explicit):
    gm, work, _ = bert_explicit
    out = assert_idempotent(FoldChannelScales(partial=True), work)
    pairs = scale_pairs(out)
    assert len(pairs) == 8 and all(mul is None for _, mul in pairs)
    kept = sum(p.numel() for n, p in out.named_parameters() if n.startswith(SCALE_PREFIX))
    assert _n_params(out) == _n_params(gm) + kept      # only the explicit scales remain
    assert_equivalent(gm, out, (IDS,), rtol=RTOL, atol=ATOL)


class _Tied(nn.Module):
    """ln -> fc1 (weight tied with fc2, which reads the raw input)."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d)
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        return self.fc1(self.ln(x)) + self.fc2(x)


class _Chain(nn.Module):
    """fc1 -> fc2 directly: 1/a folds into fc1's output rows and bias."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.fc2(self.fc1(x))


def _with_pair(model: nn.Module, producer: str, width: int):
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    gm = lowbit.capture(model.eval(), (x,))
    work = copy.deepcopy(gm)
    y = next(n for n in work.graph.nodes if n.name == producer)
    a = torch.logspace(-1, 1, width)
    insert_scale_pair(work, y, set(y.users), "site", a)
    work.recompile()
    return gm, work, x


def test_tied_consumer_weight_is_refused():
    _, work, _ = _with_pair(_Tied(), "layer_norm", 16)
    assert_untouched(FoldChannelScales(), work)
    [(name, why)] = FoldChannelScales()(work).refused
    assert name == "lowbit_scale_site" and "tied" in why


def test_linear_producer_rows_and_bias():
    gm, work, x = _with_pair(_Chain(), "linear", 32)
    out = assert_idempotent(FoldChannelScales(), work)
    assert scale_pairs(out) == [] and _n_params(out) == _n_params(gm)
    assert_equivalent(gm, out, (x,), rtol=RTOL, atol=ATOL)


def test_graph_without_pairs_is_left_alone(bert_explicit):
    assert_untouched(FoldChannelScales(), bert_explicit[0])
