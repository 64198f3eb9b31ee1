"""RemoveDropout: structure, idempotence, a graph it must leave alone, equivalence."""

import torch
from transformers import BertConfig, BertModel

from lowbit.capture import capture
from lowbit.passes.fx.remove_dropout import RemoveDropout
from lowbit.testing import assert_equivalent, assert_idempotent, assert_untouched, op_counts

DROPOUT = "aten.dropout.default"


def _tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, vocab_size=100)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 100, (1, 8))
    return model, capture(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def test_removes_every_eval_dropout_and_keeps_function():
    model, gm = _tiny_bert()
    before = op_counts(gm)
    assert before[DROPOUT] == 1 + 2 * 2  # embeddings + (attention out, FFN out) x 2 layers
    after_gm = assert_idempotent(RemoveDropout(), gm)
    after = op_counts(after_gm)
    assert after[DROPOUT] == 0
    assert sum(after.values()) == sum(before.values()) - before[DROPOUT]
    assert_equivalent(gm, after_gm, rtol=0, atol=0)  # removing identities is exact


def test_leaves_training_dropout_alone():
    class Train(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, training=True) * 2

    gm = torch.export.export(Train(), (torch.randn(4),)).module()
    assert op_counts(gm)[DROPOUT] == 1
    assert_untouched(RemoveDropout(), gm)
