"""Per-word mixed-precision embeddings of a graph's word table, planned once over the graph view.

    site = plan_word_bits(graph, plan)      # the word embedding, its tied head, the tiers
    QuantizeWordBits(plan)(gm)              # FX: lookup -> lowbit::tiered_embedding, tied head
                                            #     -> lowbit::tiered_linear (passes/fx/word_bits.py)
    QuantizeWordBits(plan)(model)           # ONNX: -> lowbit.TieredEmbedding / TieredLinear
                                            #       + decompositions (passes/onnx/word_bits.py)

The word embedding is spotting's ``embedding.word`` (the largest table looked up by a graph
input). Every op reading its parameter is classified once, here: all aliases (a tied
``lm_head.weight`` is one), and in ONNX every initializer holding the same values or their
transpose (``view.tied_params``: torch.onnx.export folds ``Transpose(E)`` of a tied head into a
second copy, which the rewrite then drops):

* a lookup of the table (``view.embedding``)             -> tiered_embedding
* a linear ``x @ E^T`` [D -> V] against it (``view.linear``, the tied LM head)
                                                          -> by ``head`` (below)
* anything else keeps reading the float parameter (listed in the report as ``kept_for``).

``head`` says what a tied head becomes: "tied" (default) ``tiered_linear`` over the very same
tier operands, so the float table leaves the graph; "separate" ``tiered_linear`` over its own
copy of the same codes (separate alpha / offset parameters, so the head's alphas can be trained
apart from the embedding's; twice the tier storage); "float" the head keeps reading the float
parameter (which therefore stays). An untied head (its own weight) is never touched.

``plan`` is a ``WordBitsPlan`` (the table is fitted here with ``quantize_embedding``, the same
float32 values in the same order on both IRs, so FX and ONNX get bit-identical codes) or a
fitted ``TieredEmbedding`` of the same table (used as is). Clear errors (ConfigError): no word
embedding, a plan for another vocabulary size or width, D not a multiple of 8 (planes pack 8
columns per byte).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.passes.patterns import EmbeddingRef, LinearRef
from lowbit.passes.spot import find_transformer
from lowbit.passes.view import view_of
from lowbit.quant import bcq
from lowbit.quant.word_bits import TieredEmbedding, WordBitsPlan, quantize_embedding

__all__ = ["HEADS", "WordBitsSite", "check_word_bits_options", "plan_word_bits"]

HEADS = ("tied", "separate", "float")


@dataclasses.dataclass(frozen=True, eq=False)
class WordBitsSite:
    """What to rewrite: the table's lookups, the tied head linears to convert (empty for
    ``head="float"`` or an untied model) with the head mode, the fitted tiers, and the readers
    of the float parameter left as they are (``drop`` is True when there are none)."""

    embedding: EmbeddingRef
    lookups: tuple
    heads: tuple[tuple[LinearRef, object], ...]    # (ref, its output value)
    head: str
    tiers: TieredEmbedding
    kept_for: tuple[str, ...]
    rel_error: float

    @property
    def drop(self) -> bool:
        return not self.kept_for

    def summary(self) -> dict:
        plan = self.tiers.plan
        return {"embedding": self.embedding.name, "vocab": plan.vocab_size,
                "dim": self.tiers.dim, "method": plan.method, "bits": list(plan.bits),
                "tier_sizes": list(plan.tier_sizes), "average_bits": round(plan.average_bits, 6),
                "nbytes": self.tiers.nbytes(), "rel_error": round(self.rel_error, 6),
                "head": self.head, "heads": [r.name for r, _ in self.heads],
                "kept_for": list(self.kept_for)}


def check_word_bits_options(plan, head: str) -> None:
    if not isinstance(plan, (WordBitsPlan, TieredEmbedding)):
        raise ConfigError(f"QuantizeWordBits takes a lowbit.quant.word_bits.WordBitsPlan or a "
                          f"fitted TieredEmbedding, got {type(plan).__name__}")
    if head not in HEADS:
        raise ConfigError(f"QuantizeWordBits: head must be one of {HEADS}, got {head!r}")


def _word_embedding(graph) -> EmbeddingRef:
    words = [e for e in find_transformer(graph).embeddings if e.role == "embedding.word"]
    if not words:
        raise ConfigError("QuantizeWordBits: no word embedding found (a 2-D table parameter "
                          "looked up by a graph input); nothing to quantize per word")
    return words[0]


def _tiers(plan, weight: torch.Tensor, emb: EmbeddingRef, iters: int, progress: bool
           ) -> TieredEmbedding:
    v, d = weight.shape
    vocab = plan.plan.vocab_size if isinstance(plan, TieredEmbedding) else plan.vocab_size
    if vocab != v:
        raise ConfigError(f"QuantizeWordBits: the plan covers {vocab} token ids, the word "
                          f"embedding {emb.name} has {v} rows: plan and model differ (count "
                          f"tokens with vocab_size={v})")
    if d % 8:
        raise ConfigError(f"QuantizeWordBits: the word embedding {emb.name} is {d} wide; bit "
                          f"planes pack 8 columns per byte, so D must be a multiple of 8")
    group = (plan.plan if isinstance(plan, TieredEmbedding) else plan).group
    if group not in (None, d):
        raise ConfigError(f"QuantizeWordBits: the plan has alpha groups of {group} columns; the "
                          f"tiered ops take one alpha set per row so far (group=None)")
    if isinstance(plan, TieredEmbedding):
        if plan.dim != d:
            raise ConfigError(f"QuantizeWordBits: the TieredEmbedding is {plan.dim} wide, the "
                              f"word embedding {emb.name} {d}")
        return plan
    return quantize_embedding(weight, plan, iters=iters, progress=progress)


def plan_word_bits(graph, plan: WordBitsPlan | TieredEmbedding, *, head: str = "tied",
                   iters: int = bcq.DEFAULT_ITERS, progress: bool = True) -> WordBitsSite:
    """Find the word table of ``graph`` (FX GraphModule or onnx_ir Model), classify its
    readers and fit it (module docstring)."""
    check_word_bits_options(plan, head)
    view = view_of(graph, "QuantizeWordBits")
    emb = _word_embedding(graph)
    table = view.param(emb.weight)       # FX: the live tensor; ONNX: a read-only numpy array
    weight = (table.detach() if isinstance(table, torch.Tensor)
              else torch.from_numpy(np.array(table))).to(torch.float32)
    tiers = _tiers(plan, weight, emb, iters, progress)
    names = view.tied_params(emb.weight)      # name -> stored transposed
    v, d = weight.shape
    lookups, heads, kept = [], [], []
    readers = dict.fromkeys(n for name in names for n in view.param_readers(name))
    for node in readers:
        ref = view.embedding(node)
        if isinstance(ref, EmbeddingRef) and names.get(ref.weight) is False:
            lookups.append(node)
            continue
        ref = view.linear(node)
        if (isinstance(ref, LinearRef) and ref.weight in names
                and names[ref.weight] == (ref.weight_layout == "in_out")
                and (ref.in_features, ref.out_features) == (d, v) and head != "float"):
            heads.append((ref, view.linear_out(ref)))
            continue
        kept.append(view.describe(node))
    err = float((weight - tiers.dequantize()).norm() / weight.norm().clamp_min(1e-30))
    return WordBitsSite(emb, tuple(lookups), tuple(heads), head, tiers, tuple(kept), err)
