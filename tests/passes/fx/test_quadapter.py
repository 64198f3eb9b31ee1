"""InsertQuadapter and train_quadapter on a one-block Llama: structure and plumbing only.

No accuracy claim is tested here (none has been measured yet): the test checks the training
graph's form, that only log(a) trains, that the weights stay frozen, that the trained scales
land in the pair graph, and that the folded result is still the float function.
"""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError
from lowbit.passes.fx.fold_channel_scales import FoldChannelScales, scale_pairs
from lowbit.passes.fx.quadapter import ActQuant, InsertQuadapter, WeightQuant
from lowbit.passes.fx.smoothquant import SmoothQuantScales, channel_absmax
from lowbit.testing import assert_equivalent, assert_idempotent, op_counts
from lowbit.train.quadapter import QuadapterConfig, block_outputs, train_quadapter

transformers = pytest.importorskip("transformers")

VOCAB = 100
IDS = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
CALIB = [(torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(i)),)
         for i in range(1, 3)]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=32, use_cache=False))
    gm = lowbit.capture(model.eval(), (IDS,))
    pairs = copy.deepcopy(gm)
    SmoothQuantScales(channel_absmax(gm, CALIB))(pairs)
    return gm, pairs


def test_insert_quadapter_structure(llama):
    _, pairs = llama
    recipe = lowbit.recipes.W4A8
    out = assert_idempotent(InsertQuadapter(recipe.weight, recipe.activation), pairs)
    assert scale_pairs(out) == []                    # every pair rewritten: y / exp(log_a)
    counts, ref = op_counts(out), op_counts(pairs)
    assert counts["aten.exp.default"] == 2 and counts["aten.div.Tensor"] == ref["aten.div.Tensor"]
    assert counts["aten.mul.Tensor"] == ref["aten.mul.Tensor"] - 2 + 5   # pair muls -> W * a
    mods = dict(out.named_modules())
    assert sum(isinstance(m, ActQuant) for m in mods.values()) == 2
    assert sum(isinstance(m, WeightQuant) for m in mods.values()) == 5   # q k v | gate up
    logs = [n for n, _ in out.named_parameters() if n.endswith("_log")]
    assert len(logs) == 2
    with pytest.raises(ConfigError, match="PerGroup"):
        InsertQuadapter(lowbit.recipes.W4A16_G128.weight, recipe.activation)(
            copy.deepcopy(pairs))


def test_train_then_fold(llama, capsys):
    gm, pairs = llama
    work = copy.deepcopy(pairs)
    before = {n: p.detach().clone() for n, p in work.named_parameters()}
    assert block_outputs(gm) == ["add_8"]
    hist = train_quadapter(work, gm, CALIB, lowbit.recipes.W4A8,
                           QuadapterConfig(phase1_steps=3, phase2_steps=3, lr=0.05,
                                           log_every=3))
    assert len(hist["loss1"]) == 3 and len(hist["loss2"]) == 3
    assert all(torch.isfinite(torch.tensor(hist["loss1"] + hist["loss2"])))
    assert "quadapter phase 2 step 6/6" in capsys.readouterr().err
    after = dict(work.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed and all(n.startswith("lowbit_scale_") for n in changed)   # weights frozen
    folded = FoldChannelScales()(work).graph
    assert scale_pairs(folded) == []
    assert_equivalent(gm, folded, (IDS,), rtol=1e-5, atol=1e-5)
