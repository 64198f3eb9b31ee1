"""QuantizeWordBits (FX): the word table becomes per-word mixed-precision tiers.

    embedding(E, ids)      ->  tiered_embedding(ids, pos, planes[], alpha[], offset[])
    linear(x, E[, b])      ->  tiered_linear(x, pos, planes[], alpha[], offset[], b)  (tied head)

with ``E'[id] = cat_t(W'_t)[pos[id]]`` (``lowbit.quant.word_ops``). The site (lookups, tied
heads, fitted tiers) comes from ``plan_word_bits`` (written once for both IRs,
``lowbit.passes.word_bits``). Beside the embedding's owner module: ``wb_pos`` (int32 [V]) and per
tier ``wb_planes_<t>`` (uint8 [q_t, n_t, D/8]) as buffers, ``wb_alpha_<t>`` ([n_t, 1, q_t]) and
``wb_offset_<t>`` ([n_t, 1], uniform fits) as parameters with ``requires_grad=False``; a fit
without offsets reads an empty ``wb_offset_<t>`` buffer. ``head="separate"`` gives the head its
own ``wb_head_alpha_<t>`` / ``wb_head_offset_<t>`` (the planes and ``pos`` are shared: codes are
never trained). The float table (every alias of a tied weight) is deleted once nothing reads it.
The report is kept in ``gm.meta["lowbit_word_bits"]``. A graph holding tiered ops already is
left alone (``modified=False``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx

from lowbit.passes.fx.attach import attach
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.view.fx_graph import linear_input, tensor_of
from lowbit.passes.word_bits import WordBitsSite, check_word_bits_options, plan_word_bits
from lowbit.quant import bcq
from lowbit.quant.word_bits import TieredEmbedding, WordBitsPlan
from lowbit.quant.word_ops import TIERED_EMBEDDING, TIERED_LINEAR, tiered_operands

__all__ = ["QuantizeWordBits", "word_bits_nodes"]

aten = torch.ops.aten
_KEEP_META = ("val", "nn_module_stack", "stack_trace")


def word_bits_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and n.target in (TIERED_EMBEDDING, TIERED_LINEAR)]


def _put(gm: fx.GraphModule, owner: str, attr: str, value: torch.Tensor, *, param: bool) -> str:
    return attach(gm, f"{owner}.{attr}" if owner else attr, value, param=param)


def _operands(gm: fx.GraphModule, owner: str, ops: dict, prefix: str, shared: dict | None
              ) -> dict:
    """get_attr targets of the operands: ``pos`` and planes from ``shared`` when given."""
    if shared is not None:
        out = {"pos": shared["pos"], "planes": shared["planes"]}
    else:
        out = {"pos": _put(gm, owner, "wb_pos", ops["pos"], param=False),
               "planes": [_put(gm, owner, f"wb_planes_{t}", p, param=False)
                          for t, p in enumerate(ops["planes"])]}
    out["alpha"] = [_put(gm, owner, f"{prefix}alpha_{t}", a, param=True)
                    for t, a in enumerate(ops["alpha"])]
    out["offset"] = [_put(gm, owner, f"{prefix}offset_{t}", o, param=o.numel() > 0)
                     for t, o in enumerate(ops["offset"])]
    return out


def _replace(gm: fx.GraphModule, node: fx.Node, target, first: fx.Node, names: dict,
             extra: tuple) -> fx.Node:
    g = gm.graph
    with g.inserting_before(node):
        get = g.get_attr
        new = g.call_function(target, (first, get(names["pos"]),
                                       [get(n) for n in names["planes"]],
                                       [get(n) for n in names["alpha"]],
                                       [get(n) for n in names["offset"]], *extra))
    new.meta.update({k: v for k, v in node.meta.items() if k in _KEEP_META})
    node.replace_all_uses_with(new)
    g.erase_node(node)
    return new


def _head_bias(node: fx.Node) -> fx.Node | None:
    return node.args[2] if node.target == aten.linear.default and len(node.args) > 2 else None


def _drop_table(gm: fx.GraphModule, table: torch.Tensor) -> None:
    """Erase the unread get_attr nodes of ``table`` and, once none is left, every alias."""
    g = gm.graph
    for n in list(g.nodes):
        if n.op == "get_attr" and not n.users and tensor_of(gm, n) is table:
            g.erase_node(n)
    if any(n.op == "get_attr" and tensor_of(gm, n) is table for n in g.nodes):
        return
    for name, t in list(gm.named_parameters(remove_duplicate=False)):
        if t is table:
            path, _, attr = name.rpartition(".")
            del (gm.get_submodule(path) if path else gm)._parameters[attr]


def _rewrite(gm: fx.GraphModule, site: WordBitsSite) -> None:
    table = tensor_of(gm, site.embedding.node.args[0])
    owner = site.embedding.weight.rpartition(".")[0]
    ops = tiered_operands(site.tiers)
    names = _operands(gm, owner, ops, "wb_", None)
    for node in site.lookups:
        new = _replace(gm, node, TIERED_EMBEDDING, node.args[1], names, ())
        new.meta["lowbit_word_bits"] = site.embedding.name
    head_names = names if site.head == "tied" else (
        _operands(gm, owner, ops, "wb_head_", names) if site.heads else None)
    for ref, _ in site.heads:
        node = ref.node
        new = _replace(gm, node, TIERED_LINEAR, linear_input(node), head_names,
                       (_head_bias(node),))
        new.meta["lowbit_word_bits"] = ref.name
    if site.drop:
        _drop_table(gm, table)


@dataclasses.dataclass(frozen=True)
class QuantizeWordBits(Pass):
    """Per-word mixed-precision word table (module docstring; ``lowbit.passes.word_bits``).

    ``plan``: a ``WordBitsPlan`` (fitted here, ``iters`` alternating rounds) or a fitted
    ``TieredEmbedding``; ``head``: "tied" | "separate" | "float"."""

    in_place = True
    plan: WordBitsPlan | TieredEmbedding
    head: str = "tied"
    iters: int = bcq.DEFAULT_ITERS
    progress: bool = True

    def __post_init__(self) -> None:
        check_word_bits_options(self.plan, self.head)

    def call(self, gm: fx.GraphModule) -> PassResult:
        if word_bits_nodes(gm):
            return PassResult(gm, False)
        site = plan_word_bits(gm, self.plan, head=self.head, iters=self.iters,
                              progress=self.progress)
        _rewrite(gm, site)
        gm.graph.lint()
        gm.recompile()
        gm.meta["lowbit_word_bits"] = site.summary()
        return PassResult(gm, True)
