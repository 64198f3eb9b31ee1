"""Accuracy of a float model and its quantized twin on labelled sentences, side by side.

Two ways to turn a model's outputs into a class, chosen by the model:

- **head**: a model with a sequence-classification head predicts ``argmax(logits)``; a label
  is the index of a class of the head.
- **probe**: an encoder without one (all-MiniLM-L6-v2) gets a logistic-regression probe
  (``lowbit.eval.probe``) fitted once on the *float* model's sentence embeddings of labelled
  training text, then applied unchanged to the float and to the quantized embeddings of the
  test sentences (``mean_pool`` of the last hidden state, ``lowbit.eval.sentences``).

Both sides see the same length-sorted batches; predictions are compared pairwise
(``lowbit.eval.stats.paired``: flips, McNemar p, interval of the difference); the probe adds
the cosine between the two sides' embeddings of each test sentence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from lowbit.errors import ConfigError
from lowbit.eval.engines import Engine
from lowbit.eval.probe import Probe
from lowbit.eval.sentences import SortedBatches, embed, run_sorted
from lowbit.eval.stats import paired

__all__ = ["classify"]


def classify(fp: Engine, quantized: Engine, tok, texts: Sequence[str], labels: Sequence[int],
             *, num_labels: int | None, train: tuple[Sequence[str], Sequence[int]] | None,
             seq: int, batch_size: int, names: tuple[str, str] = ("FP", "quantized"),
             keys: Sequence[str] = ("input_ids", "attention_mask"), show: bool = True) -> dict:
    """``num_labels``: the head's classes (a head model), or None with ``train`` (texts and
    labels the probe is fitted on). Returns the metrics, what was done and the seconds."""
    y = torch.tensor(list(labels))
    data = SortedBatches(tok, texts, batch_size, seq, keys=keys)
    result: dict = {"n": data.n, "tokens": data.tokens, "seconds": {}}
    if num_labels is not None:
        bad = sorted({int(v) for v in y if not 0 <= v < num_labels})
        if bad:
            raise ConfigError(f"label(s) {bad[:5]} are not classes of the model's head "
                              f"(0 .. {num_labels - 1})")
        result["method"] = {"kind": "head", "num_labels": num_labels}
        preds = []
        for engine, name in zip((fp, quantized), names):
            t = time.perf_counter()
            preds.append(run_sorted(lambda b, e=engine: e(b, "logits").argmax(-1), data,
                                    desc=f"{name} logits", show=show))
            result["seconds"][name] = time.perf_counter() - t
    else:
        probe, result["method"] = _fit_probe(fp, tok, train, seq, batch_size, keys, names[0],
                                             show)
        unknown = sorted({int(v) for v in y} - {int(c) for c in probe.classes})
        if unknown:
            raise ConfigError(f"label(s) {unknown[:5]} never occur in the probe's training "
                              f"labels {[int(c) for c in probe.classes]}; give --train-tsv "
                              f"with the task's labels")
        embs = []
        for engine, name in zip((fp, quantized), names):
            t = time.perf_counter()
            embs.append(embed(lambda b, e=engine: e(b, "last_hidden_state"), data,
                              desc=f"{name} embeddings", show=show))
            result["seconds"][name] = time.perf_counter() - t
        preds = [probe.predict(e) for e in embs]
        cos = torch.nn.functional.cosine_similarity(embs[0].double(), embs[1].double(), dim=-1)
        result["embedding_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min())}
    result["accuracy"] = paired(preds[0], preds[1], y)
    return result


def _fit_probe(fp: Engine, tok, train, seq: int, batch_size: int, keys, name: str,
               show: bool) -> tuple[Probe, dict]:
    texts, labels = train
    t = time.perf_counter()
    data = SortedBatches(tok, texts, batch_size * 2, seq, keys=keys)
    x = embed(lambda b: fp(b, "last_hidden_state"), data, desc=f"{name} train embeddings",
              show=show)
    probe = Probe(x.shape[1]).fit(x, torch.tensor(list(labels)))
    return probe, {"kind": "probe", "train_sentences": data.n,
                   "train_accuracy": 100 * probe.info["train_acc"],
                   "classes": [int(c) for c in probe.classes],
                   "seconds": time.perf_counter() - t}
