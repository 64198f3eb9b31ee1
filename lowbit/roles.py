"""The role vocabulary: names of the parts of a transformer, shared by config, recipes and passes.

``lowbit.passes.patterns.TransformerMap`` assigns these roles to a graph's nodes; recipes and
ignore lists name them. They live here, outside ``lowbit.passes``, so that ``lowbit.config``
can check a recipe's roles without importing a pass (config knows no pass: see the
import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

__all__ = ["LINEAR_ROLES", "ROLES", "SMOOTHQUANT_ROLES"]

LINEAR_ROLES = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o",
                "ffn.in", "ffn.gate", "ffn.out", "head")
ROLES = LINEAR_ROLES + (
    "embedding.word", "embedding.position", "embedding.token_type", "attn.core", "ffn.act",
    "norm.attn", "norm.ffn", "norm.embedding", "norm.final", "norm.extra", "residual",
)
# The linears whose inputs SmoothQuant scales by default (FX and ONNX alike): every linear of
# a block, not the head.
SMOOTHQUANT_ROLES = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "ffn.in", "ffn.gate",
                     "ffn.out")
