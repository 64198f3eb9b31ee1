"""Strided-window perplexity: which tokens each window scores (every token after the first
exactly once), and the number itself against Hugging Face's own loss on a tiny GPT-2."""

import math

import pytest
import torch

from lowbit.eval.perplexity import perplexity, token_stream, tokens_for, windows

transformers = pytest.importorskip("transformers")

# float32 logits summed over ~100 tokens in a different order than HF's mean: rounding only
NLL_ATOL = 1e-5


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=32)).eval()


@pytest.mark.parametrize("seq, stride", [(8, 8), (8, 3), (8, 7), (5, 1)])
def test_every_token_after_the_first_scored_once(seq, stride):
    ids = torch.arange(100)
    wins = windows(ids, seq, stride)
    starts = wins.ids[:, 0]
    assert torch.equal(starts, torch.arange(len(starts)) * stride)
    scored = [int(w[seq - k + j]) for w, k in zip(wins.ids, wins.scored.tolist())
              for j in range(k)]
    end = int(wins.ids[-1, -1])
    if stride < seq:           # overlapping windows: nothing skipped, nothing twice
        assert scored == list(range(1, end + 1))
    else:                      # disjoint: each window's first token has no context
        assert scored == [t for t in range(1, end + 1) if t % seq]
    assert wins.tokens == len(scored)
    assert len(windows(ids, seq, stride, n=2).ids) == 2
    assert tokens_for(len(wins.ids), seq, stride) <= len(ids) < \
        tokens_for(len(wins.ids) + 1, seq, stride)


def test_refuses_bad_windows():
    with pytest.raises(ValueError, match="stride"):
        windows(torch.arange(10), 4, 5)
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(torch.arange(3), 4, 2)


def _hf_nll_sum(model, wins) -> float:
    """Independently: HF's shifted cross-entropy over the window with unscored targets set to
    -100, times the number of targets it averaged over."""
    total = 0.0
    with torch.no_grad():
        for w, k in zip(wins.ids, wins.scored.tolist()):
            labels = w.clone()[None]
            labels[0, :w.numel() - k] = -100
            total += float(model(input_ids=w[None], labels=labels).loss) * k
    return total


@pytest.mark.parametrize("stride", [16, 6])
def test_perplexity_is_exp_of_mean_token_nll(gpt2, stride):
    ids = torch.randint(0, 50, (120,), generator=torch.Generator().manual_seed(1))
    wins = windows(ids, 16, stride)
    out = perplexity(lambda x: gpt2(input_ids=x).logits, wins, batch_size=3, show=False)
    reference = _hf_nll_sum(gpt2, wins) / wins.tokens
    assert out["tokens"] == wins.tokens
    assert abs(out["nll"] - reference) < NLL_ATOL
    assert out["ppl"] == pytest.approx(math.exp(out["nll"]), rel=1e-12)
    assert sum(out["window_nll"]) == pytest.approx(out["nll"] * wins.tokens, rel=1e-12)
    # batching does not change it
    one = perplexity(lambda x: gpt2(input_ids=x).logits, wins, batch_size=1, show=False)
    assert abs(one["nll"] - out["nll"]) < NLL_ATOL


def test_token_stream_takes_a_prefix():
    class Tok:                          # one token per character, counts what it was given
        seen = 0

        def __call__(self, text, add_special_tokens):
            Tok.seen = max(Tok.seen, len(text))
            return {"input_ids": [ord(c) for c in text]}
    text = "abcdefghij" * 1000
    ids = token_stream(Tok(), text, 50)
    assert ids.tolist() == [ord(c) for c in text[:50]]
    assert Tok.seen < len(text)         # the whole text was never tokenized
    assert len(token_stream(Tok(), "abc", 50)) == 3
