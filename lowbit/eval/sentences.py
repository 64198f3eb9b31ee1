"""Sentences in length-sorted batches, and what a model makes of them per sentence.

``SortedBatches`` tokenizes once (truncation at ``seq`` tokens), orders the sentences by token
length (ties by file order) and batches them padded to each batch's own longest sentence, so
little padding is computed; ``run_sorted`` puts per-row results back in file order. Padding
cannot change a row's result beyond float rounding: attention masks the pads, pooling skips
them (``mean_pool``), and a quantizer with a frozen range or a per-token one does not see the
other rows.

    sentence embedding  e = normalize(sum_t m_t h_t / sum_t m_t)       (``mean_pool``: what
                                                                       sentence-transformers
                                                                       does for MiniLM)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lowbit import progress
from lowbit.data import text_batches
from lowbit.models.minilm import mean_pool

__all__ = ["SortedBatches", "embed", "last_hidden", "run_sorted"]


class SortedBatches:
    """Texts tokenized once, in batches of similar length; ``order[i]`` is the file index of
    the i-th row of the concatenated batch outputs."""

    def __init__(self, tok, texts: Sequence[str], batch_size: int, seq: int, *,
                 keys: Sequence[str] = ("input_ids", "attention_mask")):
        lengths = [len(ids) for ids in tok(list(texts), truncation=True,
                                           max_length=seq)["input_ids"]]
        self.order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
        self.batches = list(text_batches(tok, [texts[i] for i in self.order],
                                         batch_size=batch_size, seq_len=seq, pad_to_max=False,
                                         keys=keys))
        self.max_len = max(lengths)
        self.n = len(texts)
        self.tokens = sum(lengths)

    def unsort(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(rows)
        out[torch.tensor(self.order)] = rows
        return out


def run_sorted(fn: Callable[[dict], torch.Tensor], data: SortedBatches, *, desc: str = "",
               show: bool = True) -> torch.Tensor:
    """``fn(batch)`` (one row per sentence) over every batch, rows back in file order; a
    progress bar (``lowbit.progress``) counts sentences."""
    rows = []
    with torch.no_grad(), progress.bar(total=data.n, desc=desc, unit="sentence",
                                       enabled=show) as bar:
        for b in data.batches:
            rows.append(fn(b))
            bar.update(len(rows[-1]))
    return data.unsort(torch.cat(rows))


def last_hidden(out) -> torch.Tensor:
    """The last hidden state of a model's output (a ModelOutput, or a tuple whose first
    element it is)."""
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def embed(hidden: Callable[[dict], torch.Tensor], data: SortedBatches, *, desc: str = "",
          show: bool = True) -> torch.Tensor:
    """Sentence embeddings ``[n, H]`` (float32, file order) from ``hidden(batch)``, the last
    hidden state ``[b, s, H]``."""
    return run_sorted(lambda b: mean_pool(hidden(b), b["attention_mask"]).float(), data,
                      desc=desc, show=show)
