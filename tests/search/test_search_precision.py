"""Subgroups of real graph structures (lowbit.passes.subgroups) and the whole search
(lowbit.mixed_precision.search_precision) on tiny Hugging Face models built from configs.

Tiny configs, random weights with fixed seeds, sequence length 8; each model captured once.
"""

from __future__ import annotations

import collections

import pytest
import torch

from lowbit.capture import capture
from lowbit.errors import ConfigError
from lowbit.mixed_precision import lm_loss, search_precision
from lowbit.passes.subgroups import list_subgroups
from lowbit.search import Budget, PerHead, PerNeurons, PrecisionPlan, SearchSpace, WholeLinear

transformers = pytest.importorskip("transformers")
pytest.importorskip("highspy")

VOCAB, SEQ = 1000, 8
FAST = SearchSpace(bits=(0, 2, 4, 8), group=None, bcq_iters=2)   # small and quick


def _ids(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB)
    return capture(transformers.BertModel(cfg).eval(), (_ids(),))


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128,
                                   vocab_size=VOCAB, max_position_embeddings=64, use_cache=False)
    return capture(transformers.LlamaForCausalLM(cfg).eval(), {"input_ids": _ids(2)})


def _rows(subgroups, linear):
    return [(s.rows, s.tie) for s in subgroups if s.linear == linear]


def test_bert_whole_linears_then_heads_and_neurons(bert):
    whole = list_subgroups(bert)
    assert len(whole) == 12 and all(s.rows == (0, s.out_features) for s in whole)
    assert [s.role for s in whole[:6]] == ["attn.q", "attn.k", "attn.v", "attn.o", "ffn.in",
                                           "ffn.out"]
    split = list_subgroups(bert, (PerHead(), PerNeurons(32)))
    q = "encoder.layer.1.attention.self.query"
    assert _rows(split, q) == [((16 * h, 16 * h + 16), f"block1.kv{h}") for h in range(4)]
    assert _rows(split, "encoder.layer.1.attention.self.value")[2] == ((32, 48), "block1.kv2")
    assert _rows(split, "encoder.layer.0.intermediate.dense") == [
        ((32 * j, 32 * j + 32), f"block0.ffn{j}") for j in range(4)]
    assert _rows(split, "encoder.layer.0.output.dense") == [((0, 64), None)]
    assert len(split) == 2 * (3 * 4 + 1 + 4 + 1)
    with pytest.raises(ConfigError, match="intermediate.dense: PerNeurons.size=48"):
        list_subgroups(bert, PerNeurons(48))
    with pytest.raises(ConfigError, match="granularity must be"):
        list_subgroups(bert, "heads")


def test_llama_gqa_ties_q_heads_to_their_kv_head(llama):
    split = list_subgroups(llama, (PerHead(), PerNeurons(64)))
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert [t for _, t in _rows(split, q)] == ["block0.kv0", "block0.kv0", "block0.kv1",
                                              "block0.kv1"]
    assert _rows(split, k) == [((0, 16), "block0.kv0"), ((16, 32), "block0.kv1")]
    ties = collections.Counter(s.tie for s in split if s.tie)
    assert ties["block1.kv1"] == 4 and ties["block0.ffn1"] == 2        # q x2, k, v; up, gate
    assert {s.role for s in split if s.tie == "block0.ffn1"} == {"ffn.in", "ffn.gate"}


def test_gemma3_single_kv_head_ties_all_heads():
    from transformers.models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, intermediate_size=128,
                           vocab_size=VOCAB, max_position_embeddings=64, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"], use_cache=False)
    gm = capture(Gemma3ForCausalLM(cfg).eval(), (_ids(),))
    split = list_subgroups(gm, PerHead())
    assert [s.rows for s in split if s.linear == "model.layers.1.self_attn.q_proj"] == [
        (0, 16), (16, 32), (32, 48), (48, 64)]
    assert {s.tie for s in split if s.linear.startswith("model.layers.1.self_attn")
            and s.role != "attn.o"} == {"block1.kv0"}


def test_gpt2_fused_qkv_splits_into_q_k_v_heads():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False)
    gm = capture(transformers.GPT2LMHeadModel(cfg).eval(), (_ids(),))
    split = [s for s in list_subgroups(gm, PerHead()) if s.role == "attn.qkv"]
    assert [s.rows[0] for s in split] == list(range(0, 192, 16))
    assert [s.tie for s in split] == [f"block0.kv{h}" for h in range(4)] * 3
    assert {s.layout for s in split} == {"in_out"}
    plan = search_precision(gm, Budget(avg_bits=4), calibration=[(_ids(seed=1),)],
                            granularity=PerHead(), space=FAST, progress=False)
    assert plan.total_bytes <= plan.budget_bytes


def test_search_on_bert_meets_the_budget_and_leaves_the_graph_alone(bert):
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in bert.named_parameters()}
    batches = [(_ids(1, seed),) for seed in range(3)]
    plan = search_precision(bert, Budget(avg_bits=3.0), calibration=batches,
                            granularity=(PerHead(), PerNeurons(32)), space=FAST,
                            progress=False)
    assert plan.average_bits <= 3.0 and plan.total_bytes <= plan.budget_bytes
    assert len(plan.entries) == 36 and plan.info["batches"] == 3
    assert all(e.sensitivity is not None and e.sensitivity >= 0 for e in plan.entries)
    PrecisionPlan.from_dict(plan.to_dict())                    # valid, ties consistent
    for n, p in bert.named_parameters():
        assert torch.equal(p, before[n][0]) and p.requires_grad == before[n][1]
    roomy = search_precision(bert, Budget(avg_bits=40), calibration=batches, space=FAST,
                             progress=False)
    assert {e.code for e in roomy.entries} == {"fp"}
    assert "12 linears" in roomy.summary()


def test_infeasible_budget_without_pruning_gives_the_smallest_size(bert):
    space = SearchSpace(bits=(2, 4), codes=("uniform",), group=None, fp=False)
    smallest = sum(s.out_features * (s.in_features // 4 + 4) for s in list_subgroups(bert))
    with pytest.raises(ConfigError, match=f"smallest choice takes {smallest} bytes"):
        search_precision(bert, smallest - 1, calibration=[(_ids(),)], space=space,
                         progress=False)
    plan = search_precision(bert, smallest, calibration=[(_ids(),)], space=space,
                            progress=False)
    assert plan.total_bytes == smallest and {e.bits for e in plan.entries} == {2}


def test_llama_with_the_lm_loss(llama):
    batches = [{"input_ids": _ids(2, seed)} for seed in range(2)]
    plan = search_precision(llama, Budget(avg_bits=4.5), calibration=batches,
                            granularity=(PerHead(), PerNeurons(64)), space=FAST,
                            loss_fn=lm_loss, progress=False)
    assert plan.info["loss"] == "lm_loss" and plan.average_bits <= 4.5
    for tie in {e.tie for e in plan.entries if e.tie}:
        assert len({e.pruned for e in plan.entries if e.tie == tie}) == 1
    with pytest.raises(ConfigError, match="fx.GraphModule"):
        search_precision(torch.nn.Linear(2, 2), 10, calibration=[])
    assert isinstance(WholeLinear(), WholeLinear)
