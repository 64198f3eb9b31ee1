"""The subgroups of a graph's linears for mixed-precision search, read from its TransformerMap.

    subgroups = list_subgroups(gm, PerHead())        # FX GraphModule or onnx_ir Model

Linears are picked as every quantization pass picks them (``sites.quantized_linears``: roles,
ignore globs). Rows are those of the weight taken as [out, in] (a Conv1D / ONNX MatMul weight
[in, out] is read transposed). Granularities (``lowbit.search.space``; one, or a tuple)::

    WholeLinear()    one subgroup per linear: rows 0:N
    PerHead()        q, k, v: head h is rows h*d:(h+1)*d, d = head_dim; a fused qkv
                     [(H + 2 KV) d, K] is split into its H q heads, KV k heads, KV v heads.
                     tie "block{i}.kv{j}": k/v head j and the q heads that read it (GQA: H/KV
                     of them; MHA: one) prune together, so pruning removes whole heads
    PerNeurons(n)    ffn.in and ffn.gate: rows j*n:(j+1)*n; tie "block{i}.ffn{j}" (a neuron
                     is pruned in up and gate together)

Other linears stay whole. A head or neuron split that does not divide the linear raises a
ConfigError naming it. (A Phi-3-style fused gate+up, one ``ffn.in`` with no gate, is split as
rows; its tie then pairs no gate rows: pruning such blocks is not structural.)
"""

from __future__ import annotations

from lowbit.config import QuantSpec, Recipe
from lowbit.errors import ConfigError
from lowbit.passes.patterns import AttentionMap, LinearRef
from lowbit.passes.sites import check_roles, quantized_linears
from lowbit.passes.spot import find_transformer
from lowbit.roles import SMOOTHQUANT_ROLES
from lowbit.search.space import PerHead, PerNeurons, Subgroup, WholeLinear

__all__ = ["DEFAULT_ROLES", "list_subgroups"]

DEFAULT_ROLES = SMOOTHQUANT_ROLES   # every linear of a block; not the head
_KINDS = (WholeLinear, PerHead, PerNeurons)


def _granularity(g) -> tuple[PerHead | None, PerNeurons | None]:
    gs = g if isinstance(g, tuple) else (g,)
    if not gs or not all(isinstance(x, _KINDS) for x in gs):
        raise ConfigError(f"granularity must be WholeLinear(), PerHead(), PerNeurons(size) or "
                          f"a tuple of them (lowbit.search), got {g!r}")
    return (next((x for x in gs if isinstance(x, PerHead)), None),
            next((x for x in gs if isinstance(x, PerNeurons)), None))


def _head_rows(attn: AttentionMap, role: str, ref: LinearRef, block: int
               ) -> list[tuple[tuple[int, int], str]]:
    """(rows, tie) per head of q / k / v / qkv."""
    heads, kv = attn.num_heads, attn.num_kv_heads or attn.num_heads
    if not heads or heads % kv:
        raise ConfigError(f"{ref.name}: PerHead needs the head counts of block {block}, found "
                          f"heads={heads}, kv_heads={attn.num_kv_heads}")
    width = {"attn.q": heads, "attn.k": kv, "attn.v": kv, "attn.qkv": heads + 2 * kv}[role]
    if ref.out_features % width:
        raise ConfigError(f"{ref.name}: {ref.out_features} output rows do not split into "
                          f"{width} heads")
    d, per_kv = ref.out_features // width, heads // kv
    parts = {"attn.q": [(0, heads, per_kv)], "attn.k": [(0, kv, 1)], "attn.v": [(0, kv, 1)],
             "attn.qkv": [(0, heads, per_kv), (heads, kv, 1), (heads + kv, kv, 1)]}[role]
    out = []
    for start, count, share in parts:
        for h in range(count):
            a = (start + h) * d
            out.append(((a, a + d), f"block{block}.kv{h // share}"))
    return out


def _neuron_rows(size: int, ref: LinearRef, block: int) -> list[tuple[tuple[int, int], str]]:
    if ref.out_features % size:
        raise ConfigError(f"{ref.name}: PerNeurons(size={size}) does not divide its "
                          f"{ref.out_features} neurons")
    return [((a, a + size), f"block{block}.ffn{a // size}")
            for a in range(0, ref.out_features, size)]


def list_subgroups(graph, granularity=None, *, roles: tuple[str, ...] = DEFAULT_ROLES,
                   ignore: tuple[str, ...] = ()) -> list[Subgroup]:
    """The subgroups of ``graph``'s chosen linears, in graph order (module docstring);
    ``granularity`` None is ``WholeLinear()``."""
    per_head, per_neurons = _granularity(WholeLinear() if granularity is None else granularity)
    tmap = find_transformer(graph)
    pick = Recipe("search_precision", weight=QuantSpec(), activation=None, roles=tuple(roles),
                  ignore=tuple(ignore))
    check_roles(pick, tmap)
    block_of = {id(ref): (b.index, b.attn) for b in tmap.blocks for _, ref in b.linears()}
    out = []
    for role, ref in quantized_linears(pick, tmap):
        n = ref.out_features
        parts = [((0, n), None)]
        if role in ("attn.q", "attn.k", "attn.v", "attn.qkv") and per_head is not None:
            block, attn = block_of[id(ref)]
            parts = _head_rows(attn, role, ref, block)
        elif role in ("ffn.in", "ffn.gate") and per_neurons is not None:
            parts = _neuron_rows(per_neurons.size, ref, block_of[id(ref)][0])
        out.extend(Subgroup(ref.name, role, ref.weight, rows, ref.in_features, n, tie,
                            ref.weight_layout)
                   for rows, tie in sorted(parts))
    if not out:
        raise ConfigError(f"no linear to search: roles={list(roles)}, ignore={list(ignore)}")
    return out
