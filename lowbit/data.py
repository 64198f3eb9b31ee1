"""Calibration and evaluation text: files, the shared data folder, batching for a tokenizer.

``shared_data_dir()`` finds ``../shared/data`` relative to the repo (or ``$LOWBIT_DATA``);
the data is read from there, never copied into the repo.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lowbit.errors import CalibrationError

__all__ = ["pydoc_sentences", "read_sst2", "read_texts", "shared_data_dir", "text_batches"]


def shared_data_dir() -> Path:
    """``$LOWBIT_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("LOWBIT_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_sst2(split: str = "dev", path: Path | None = None) -> tuple[list[str], list[int]]:
    """GLUE SST-2 (``text<TAB>label``): sentences and labels."""
    path = path or shared_data_dir() / f"sst2_{split}.tsv"
    if not path.is_file():
        raise CalibrationError(f"SST-2 {split} not found at {path} (set LOWBIT_DATA to the "
                               f"folder holding sst2_{split}.tsv)")
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["text"])
            labels.append(int(row["label"]))
    return texts, labels


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Non-empty lines of a text file; for a .tsv with a ``text`` column, that column."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration text file not found: {path}")
    if path.suffix == ".tsv":
        texts = read_sst2(path=path)[0]
    else:
        with open(path, encoding="utf-8") as f:
            texts = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("=")]
    if not texts:
        raise CalibrationError(f"calibration text file {path} holds no text")
    return texts[:limit] if limit else texts


def pydoc_sentences(n: int, words: int = 40, offset: int = 0) -> list[str]:
    """``n`` chunks of real English from ``pydoc_data.topics`` (every Python install has it)."""
    from pydoc_data.topics import topics

    ws = " ".join(topics[k] for k in sorted(topics)).split()
    return [" ".join(ws[(offset + i) * words:(offset + i + 1) * words]) for i in range(n)]


def text_batches(tokenizer, texts: Sequence[str], *, batch_size: int = 8, seq_len: int = 128,
                 pad_to_max: bool = True, keys: Sequence[str] = ("input_ids", "attention_mask"),
                 ) -> Iterator[dict]:
    """Tokenized batches as dicts of keyword inputs (lazily: one batch in memory at a time);
    ``keys`` the tokenizer does not produce (``token_type_ids`` of a GPT-2 tokenizer) are left
    out."""
    if not texts:
        raise CalibrationError("no texts to batch")
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=seq_len,
                        padding="max_length" if pad_to_max else "longest", return_tensors="pt")
        yield {k: enc[k] for k in keys if k in enc}
