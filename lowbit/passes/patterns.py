"""TransformerMap: the transformer structure of a graph, one type for every IR.

Spotting (``lowbit.passes.spot``, written once over the graph views of ``lowbit.passes.view``
for torch.fx and ONNX) produces this map, so technique passes read structure (roles), not op
soup.
A ref holds the IR's own node object (``node``) plus IR-independent facts (names, shapes).
Refs point into one graph object: re-spot after a pass rewrites the graph.

Roles (the vocabulary recipes and ignore lists use):
    embedding.word / embedding.position / embedding.token_type
    attn.q attn.k attn.v attn.qkv attn.o attn.core
    ffn.in ffn.gate ffn.out ffn.act
    norm.attn norm.ffn norm.embedding norm.final (and norm.extra for Gemma's post-norms)
    residual
    head
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from lowbit.roles import LINEAR_ROLES, ROLES  # re-exported: their old home

__all__ = [
    "LinearRef", "NormRef", "EmbeddingRef", "AttentionMap", "FFNMap", "BlockMap",
    "TransformerMap", "LINEAR_ROLES", "ROLES",
]



@dataclasses.dataclass(eq=False)
class LinearRef:
    """A matmul with a weight parameter. ``weight_layout`` is "out_in" (nn.Linear) or
    "in_out" (HF Conv1D / a plain matmul against a [K, N] parameter)."""

    node: Any
    name: str               # owning module path, e.g. "encoder.layer.0.attention.self.query"
    weight: str             # parameter name, e.g. "encoder.layer.0.attention.self.query.weight"
    bias: str | None
    in_features: int
    out_features: int
    weight_layout: str = "out_in"

    def __str__(self) -> str:
        return f"{self.name} [{self.in_features}->{self.out_features}]"


@dataclasses.dataclass(eq=False)
class NormRef:
    """LayerNorm (``kind="layernorm"``) or RMSNorm (``kind="rmsnorm"``), fused op or decomposed.
    ``nodes`` lists every node of a decomposed norm, the output node last. ``weight_offset``
    is 1.0 for Gemma's ``x * (1 + w)`` form, else 0.0."""

    node: Any
    name: str
    kind: str
    weight: str | None
    bias: str | None
    dim: int
    nodes: tuple = ()
    weight_offset: float = 0.0

    def __str__(self) -> str:
        extra = " (1+w)" if self.weight_offset else ""
        return f"{self.name} {self.kind}[{self.dim}]{extra}"


@dataclasses.dataclass(eq=False)
class EmbeddingRef:
    node: Any
    name: str
    weight: str
    role: str               # "embedding.word" | "embedding.position" | "embedding.token_type"
    num_embeddings: int
    dim: int

    def __str__(self) -> str:
        return f"{self.name} [{self.num_embeddings}x{self.dim}]"


@dataclasses.dataclass(eq=False)
class AttentionMap:
    """Separate q/k/v or a fused qkv projection, the core (SDPA op or softmax) and o."""

    core: Any
    core_kind: str          # "sdpa" | "softmax" | "mha" (nn.MultiheadAttention's fused op)
    o: LinearRef | None
    q: LinearRef | None = None
    k: LinearRef | None = None
    v: LinearRef | None = None
    qkv: LinearRef | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    rope: bool = False

    def linears(self) -> Iterator[tuple[str, LinearRef]]:
        for role in ("q", "k", "v", "qkv", "o"):
            ref = getattr(self, role)
            if ref is not None:
                yield f"attn.{role}", ref


@dataclasses.dataclass(eq=False)
class FFNMap:
    up: LinearRef           # FFN input ("intermediate.dense", "mlp.c_fc", "mlp.up_proj")
    down: LinearRef         # FFN output
    act: Any
    act_kind: str           # "gelu" | "gelu_tanh" | "silu" | "relu" | ...
    gate: LinearRef | None = None

    def linears(self) -> Iterator[tuple[str, LinearRef]]:
        yield "ffn.in", self.up
        if self.gate is not None:
            yield "ffn.gate", self.gate
        yield "ffn.out", self.down


@dataclasses.dataclass(eq=False)
class BlockMap:
    """One transformer block. ``style`` is "post-ln" (BERT) or "pre-ln" (GPT-2, Llama), or
    "unknown" when no residual add was found after the attention.
    ``residual_adds`` are (attention residual, FFN residual) in graph order."""

    index: int
    style: str
    attn: AttentionMap
    ffn: FFNMap | None
    attn_norm: NormRef | None
    ffn_norm: NormRef | None
    residual_adds: tuple = ()
    extra_norms: tuple = ()  # e.g. Gemma's post-attention / post-FFN norms, q/k norms

    def linears(self) -> Iterator[tuple[str, LinearRef]]:
        yield from self.attn.linears()
        if self.ffn is not None:
            yield from self.ffn.linears()

    def norms(self) -> Iterator[tuple[str, NormRef]]:
        if self.attn_norm is not None:
            yield "norm.attn", self.attn_norm
        if self.ffn_norm is not None:
            yield "norm.ffn", self.ffn_norm
        for n in self.extra_norms:
            yield "norm.extra", n


@dataclasses.dataclass(eq=False)
class TransformerMap:
    """What spotting found. ``unclassified`` lists (node name, reason) for every weight-bearing
    op or structure that could not be given a role: nothing is dropped silently."""

    blocks: list[BlockMap]
    embeddings: list[EmbeddingRef] = dataclasses.field(default_factory=list)
    embedding_norm: NormRef | None = None
    final_norm: NormRef | None = None
    head: list[LinearRef] = dataclasses.field(default_factory=list)
    unclassified: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ir: str = "fx"

    # ---- queries ---------------------------------------------------------------------
    def linears(self) -> Iterator[tuple[str, LinearRef]]:
        """Every linear with its role, in block order, then the head."""
        for b in self.blocks:
            yield from b.linears()
        for h in self.head:
            yield "head", h

    def norms(self) -> Iterator[tuple[str, NormRef]]:
        if self.embedding_norm is not None:
            yield "norm.embedding", self.embedding_norm
        for b in self.blocks:
            yield from b.norms()
        if self.final_norm is not None:
            yield "norm.final", self.final_norm

    def residual_adds(self) -> Iterator[Any]:
        for b in self.blocks:
            yield from b.residual_adds

    def roles_present(self) -> set[str]:
        roles = {r for r, _ in self.linears()} | {r for r, _ in self.norms()}
        roles |= {e.role for e in self.embeddings}
        if self.blocks:
            roles |= {"attn.core"}
        if any(b.ffn for b in self.blocks):
            roles |= {"ffn.act"}
        if any(b.residual_adds for b in self.blocks):
            roles |= {"residual"}
        return roles

    def role_of(self, node: Any) -> str | None:
        for role, ref in self.linears():
            if ref.node is node:
                return role
        for role, ref in self.norms():
            if ref.node is node:
                return role
        for e in self.embeddings:
            if e.node is node:
                return e.role
        for b in self.blocks:
            if node in b.residual_adds:
                return "residual"
            if b.attn.core is node:
                return "attn.core"
            if b.ffn is not None and b.ffn.act is node:
                return "ffn.act"
        return None

    # ---- printing --------------------------------------------------------------------
    def __str__(self) -> str:
        out = [f"TransformerMap ({self.ir}): {len(self.blocks)} block(s)"]
        for e in self.embeddings:
            out.append(f"  {e.role:<22} {e}")
        if self.embedding_norm is not None:
            out.append(f"  {'norm.embedding':<22} {self.embedding_norm}")
        for b in self.blocks:
            a = b.attn
            heads = f" heads={a.num_heads}" if a.num_heads else ""
            kv = f" kv_heads={a.num_kv_heads}" if a.num_kv_heads and a.num_kv_heads != a.num_heads else ""
            rope = " rope" if a.rope else ""
            out.append(f"  block {b.index} ({b.style}, attention: {a.core_kind}{heads}{kv}{rope})")
            for role, ref in b.norms():
                out.append(f"    {role:<20} {ref}")
            for role, ref in b.linears():
                out.append(f"    {role:<20} {ref}")
            if b.ffn is not None:
                out.append(f"    {'ffn.act':<20} {b.ffn.act_kind}")
            out.append(f"    {'residual':<20} {len(b.residual_adds)} add(s)")
        if self.final_norm is not None:
            out.append(f"  {'norm.final':<22} {self.final_norm}")
        for h in self.head:
            out.append(f"  {'head':<22} {h}")
        if self.unclassified:
            out.append(f"  unclassified ({len(self.unclassified)}):")
            out.extend(f"    {n}: {why}" for n, why in self.unclassified)
        return "\n".join(out)
