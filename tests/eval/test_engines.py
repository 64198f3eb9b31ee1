"""Engines with fixed input shapes: each batch is fitted to them (more rows run in further
calls, fewer are filled, short sequences padded) and the fill is cut from the output, so the
result equals running the batch as it is."""

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.eval.engines import Engine, torch_engine


def _hidden(ids, mask):
    """A stand-in model whose row results depend on that row only: [b, s, 2]."""
    return torch.stack([ids.float() * mask, mask.float().cumsum(1)], -1)


def test_fixed_batch_and_seq_give_the_free_result():
    calls = []

    def run(feed):
        calls.append({k: tuple(v.shape) for k, v in feed.items()})
        assert feed["token_type_ids"].abs().sum() == 0
        return {"pooler_output": torch.zeros(3), "last_hidden_state": _hidden(
            feed["input_ids"], feed["attention_mask"])}
    engine = Engine("fixed", run, ("input_ids", "attention_mask", "token_type_ids"),
                    batch=3, seq=8, pad_id=9)
    ids = torch.randint(1, 100, (7, 5))
    mask = torch.ones_like(ids)
    mask[2, 3:] = 0
    out = engine({"input_ids": ids, "attention_mask": mask}, "last_hidden_state")
    assert torch.equal(out, _hidden(ids, mask))
    assert calls == [{"input_ids": (3, 8), "attention_mask": (3, 8),
                      "token_type_ids": (3, 8)}] * 3


def test_first_output_when_the_name_is_unknown():
    engine = torch_engine(lambda input_ids: (input_ids * 2, input_ids))
    assert torch.equal(engine({"input_ids": torch.ones(2, 3)}, "logits"), 2 * torch.ones(2, 3))


def test_refusals():
    engine = Engine("module", lambda feed: {}, ("input_ids", "position_ids"), batch=1, seq=4)
    with pytest.raises(ConfigError, match="takes an input 'position_ids'"):
        engine({"input_ids": torch.ones(1, 4, dtype=torch.long)}, "logits")
    engine = Engine("module", lambda feed: {}, ("input_ids",), batch=1, seq=4)
    with pytest.raises(ConfigError, match="a batch of 6 tokens for a model fixed at 4"):
        engine({"input_ids": torch.ones(1, 6, dtype=torch.long)}, "logits")
