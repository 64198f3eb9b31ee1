"""Tiny one-layer Hugging Face models for the apply_precision tests (random weights, seeded,
sequence 8), each captured once per session, and ``plan_for``: a PrecisionPlan over a graph's
subgroups (PerHead, PerNeurons(32)) with the ties given pruned and a choice per subgroup."""

from __future__ import annotations

import pytest
import torch

from lowbit.capture import capture
from lowbit.testing.plans import cycled_plan

VOCAB, SEQ = 1000, 8


def ids(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def bert1():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB)
    return capture(transformers.BertModel(cfg).eval(), (ids(),))


@pytest.fixture(scope="session")
def llama1():
    """GQA: 4 q heads, 2 kv heads of 16; gated FFN of 128."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128,
                                   vocab_size=VOCAB, max_position_embeddings=64, use_cache=False)
    return capture(transformers.LlamaForCausalLM(cfg).eval(), {"input_ids": ids(2)})


@pytest.fixture(scope="session")
def gemma1():
    """Gemma-3: GQA 4/2, q/k norms, post-norms, tied embedding / head, (1 + w) RMSNorms."""
    pytest.importorskip("transformers")
    from transformers.models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, intermediate_size=128,
                           vocab_size=VOCAB, max_position_embeddings=64, sliding_window=4,
                           layer_types=["full_attention"], use_cache=False)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():           # Gemma initialises norm weights to 0: make them matter
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0, 0.5)
    return capture(model, (ids(),))


@pytest.fixture(scope="session")
def gpt2_1():
    """Fused qkv and HF Conv1D ([in, out] weights, addmm)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, n_inner=128, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False)
    return capture(transformers.GPT2LMHeadModel(cfg).eval(), (ids(),))


@pytest.fixture(scope="session")
def plan_for():
    """``lowbit.testing.plans.cycled_plan``: ``pruned`` ties (``block0.kv1``, ``block0.ffn2``)
    or linear names pruned whole; the other subgroups take ``choices`` in turn."""
    return cycled_plan


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every module of tests/search at one torch thread (tests/conftest.py one_torch_thread):
    BCQ fits and tiny GEMMs are ~50x slower with 2 spinning threads on a loaded 2-core host."""
