"""A trained tensor-train MiniLM student (``benchmarks/minilm_tt_sst2.py --save``) rebuilt as an
FX graph, quantized for TVM, and SST-2 dev accuracy of any runtime that gives the last hidden
state (issue 18: the trained model in TVM on CPU and GPU).

    student, head, info, tok = rebuild(path)            # FX, fake-quant cores as trained
    q = deployable(student, calib, word_bits=4)         # materialized halves, W8A8, 4-bit table
    acc = dev_accuracy(lambda ids, mask: q(input_ids=ids, attention_mask=mask)[0], head, dev)

``rebuild`` captures the pretrained architecture (the weights are replaced by the file's),
runs ``lowbit.tensor_train`` with the file's rank and core bits (its TT-SVD start is
overwritten) and loads the file's state strictly, so a file that does not match the
architecture is refused. ``deployable`` is what runs in TVM: ``materialize_tt`` (each layer
two linears, contracted once from the trained, fake-quantized cores) then
``lowbit.quantize(W8A8)``: both halves int8 per channel, static u8 inputs
(``QuantizeTTHalves``). The halves are re-quantized to int8, so TVM runs int8 halves, not the
int4 cores the student was trained with: ``deployable_bytes`` counts what the module stores.
``word_bits``: the word table becomes ``lowbit.quantize_words`` codes (one tier, asymmetric
uniform per row), which reproduce the student's ``--embedding-bits`` rounding (measured: 1.5e-6
on the hidden state) and lower to TVM as packed codes, so the module stores 4-bit rows instead
of an fp32 table.
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from minilm_tt_sst2 import WORD, load_student

import lowbit
from lowbit.config import TT
from lowbit.models.minilm import load_minilm, mean_pool
from lowbit.quant.word_bits import WordBitsPlan

__all__ = ["deployable", "deployable_bytes", "dev_accuracy", "padded_batches", "rebuild"]


def rebuild(path: pathlib.Path):
    """``(student GraphModule, head, info, tokenizer)`` from a ``save_student`` file."""
    state, head_state, info = load_student(path)
    model, tok = load_minilm(quiet=True)
    enc = tok(["a short example", "another one here"], padding=True, return_tensors="pt")
    example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    gm = lowbit.capture(model, example, dynamic=True)
    student = lowbit.tensor_train(gm, TT(ranks=info["rank"], bits=info["bits"]),
                                  progress=False)
    student.load_state_dict(state, strict=True)
    head = torch.nn.Linear(model.config.hidden_size, 2)
    head.load_state_dict(head_state)
    return student.eval(), head.eval(), info, tok


def deployable(student, calib: list[dict], word_bits: int | None = None):
    """The student as TVM runs it: materialized halves, W8A8 (module docstring); with
    ``word_bits`` the word table too, as ``lowbit.quantize_words`` codes (one tier,
    asymmetric uniform per row: the student's own rounding when the bits are its
    ``--embedding-bits``, so the values do not change)."""
    if word_bits:
        table = student.get_parameter(WORD)
        plan = WordBitsPlan(bits=(word_bits,), method="uniform",
                            tier=torch.zeros(table.shape[0], dtype=torch.long))
        student = lowbit.quantize_words(student, plan, head="float", progress=False)
    return lowbit.quantize(lowbit.materialize_tt(student), lowbit.recipes.W8A8,
                           calibration=calib, progress=False)


def deployable_bytes(q) -> dict:
    """Bytes of ``deployable``'s graph: int8 linear weights (``*_i8`` buffers), and every other
    parameter or buffer at its own dtype (fp32 scales, biases, norms, embeddings)."""
    int8 = sum(b.numel() for n, b in q.named_buffers() if n.endswith("_i8"))
    rest = sum(t.numel() * t.element_size()
               for n, t in [*q.named_parameters(), *q.named_buffers()] if not n.endswith("_i8"))
    return {"int8_linear_bytes": int8, "other_bytes": rest, "word_embedding_name": WORD}


def padded_batches(tok, texts: list[str], labels: list[int], batch: int, seq: int):
    """Dev sentences in fixed [batch, seq] batches (padding; the last batch repeats its first
    row to fill): ``(input_ids, attention_mask, labels, rows)`` per batch, ``rows`` real."""
    out = []
    for i in range(0, len(texts), batch):
        t, y = texts[i:i + batch], labels[i:i + batch]
        rows = len(t)
        t = t + [t[0]] * (batch - rows)
        enc = tok(t, truncation=True, max_length=seq, padding="max_length",
                  return_tensors="pt")
        out.append((enc["input_ids"], enc["attention_mask"], torch.tensor(y), rows))
    return out


@torch.no_grad()
def dev_accuracy(hidden, head, batches) -> float:
    """Accuracy (%) of ``head(mean_pool(hidden(ids, mask)))`` over ``padded_batches``."""
    right = n = 0
    for ids, mask, y, rows in batches:
        h = torch.as_tensor(hidden(ids, mask))
        logits = head(mean_pool(h.float(), mask, normalize=False))
        right += int((logits[:rows].argmax(-1) == y).sum())
        n += rows
    return 100 * right / n
