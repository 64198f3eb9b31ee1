"""Perplexity of a causal LM over strided windows of one token stream.

Windows of ``seq`` tokens start every ``stride`` tokens (``stride <= seq``). The first window
scores each of its tokens but the first (there is nothing to predict it from); every later
window scores only its last ``min(stride, seq - 1)`` tokens, the ones no earlier window
scored, each predicted from up to ``seq - 1`` tokens of context (Hugging Face's "perplexity
of fixed-length models" recipe; stride = seq gives disjoint windows). Only whole windows are
used, so every batch has one shape.

    NLL  = - sum over scored tokens t of log p(x_t | x_<t within the window)
    ppl  = exp(NLL / number of scored tokens)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from lowbit import progress

__all__ = ["Windows", "perplexity", "token_stream", "tokens_for", "windows"]


@dataclasses.dataclass(frozen=True)
class Windows:
    """``ids`` [n, seq] and, per window, how many of its last tokens are scored."""

    ids: torch.Tensor
    scored: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.scored.sum())


def tokens_for(n: int, seq: int, stride: int) -> int:
    """Tokens ``n`` windows span."""
    return seq + (n - 1) * stride


def token_stream(tok, text: str, needed: int) -> torch.Tensor:
    """The first ``needed`` tokens of ``text`` (no special tokens), or all of them when it has
    fewer. Only a prefix of the text is tokenized, doubled until it yields more tokens than
    needed (the last token of a prefix may be a word cut in two, so it is never used)."""
    chars = max(needed * 8, 1024)
    while True:
        ids = tok(text[:chars], add_special_tokens=False)["input_ids"]
        if chars >= len(text):
            return torch.tensor(ids[:needed], dtype=torch.long)
        if len(ids) > needed:
            return torch.tensor(ids[:needed], dtype=torch.long)
        chars *= 2


def windows(ids: torch.Tensor, seq: int, stride: int, n: int | None = None) -> Windows:
    """The first ``n`` (all whole ones when None) windows over the 1-D ``ids``."""
    if not 1 <= stride <= seq or seq < 2:
        raise ValueError(f"windows: need 2 <= seq and 1 <= stride <= seq, got seq {seq}, "
                         f"stride {stride}")
    whole = (len(ids) - seq) // stride + 1 if len(ids) >= seq else 0
    n = whole if n is None else min(n, whole)
    if n < 1:
        raise ValueError(f"windows: {len(ids)} token(s), fewer than one window of {seq}")
    starts = torch.arange(n) * stride
    wins = ids[starts[:, None] + torch.arange(seq)]
    scored = torch.full((n,), min(stride, seq - 1))
    scored[0] = seq - 1
    return Windows(wins, scored)


def perplexity(logits: Callable[[torch.Tensor], torch.Tensor], wins: Windows, *,
               batch_size: int, desc: str = "", show: bool = True) -> dict:
    """``logits(ids [b, seq])`` -> ``[b, seq, vocab]`` over the windows in batches:
    perplexity, mean NLL (nats per token), tokens scored, and each window's NLL sum."""
    n, seq = wins.ids.shape
    # scored target positions: the last `scored` of the seq - 1 next-token targets
    target_pos = torch.arange(seq - 1)
    mask = target_pos[None, :] >= (seq - 1 - wins.scored)[:, None]
    sums = []
    with torch.no_grad(), progress.bar(total=n, desc=desc, unit="window", enabled=show) as bar:
        for i in range(0, n, batch_size):
            ids = wins.ids[i:i + batch_size]
            z = logits(ids)[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]),
                                                    ids[:, 1:].reshape(-1), reduction="none")
            sums += (nll.reshape(ids.shape[0], -1) * mask[i:i + batch_size]).double() \
                .sum(1).tolist()
            bar.update(ids.shape[0])
    total = math.fsum(sums)
    mean = total / wins.tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": wins.tokens, "window_nll": sums}
