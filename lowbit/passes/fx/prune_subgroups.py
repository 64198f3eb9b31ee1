"""PruneSubgroups (FX): a PrecisionPlan's pruned subgroups leave the graph (smaller GEMMs).

What prunes, and what it equals in float, is ``lowbit.passes.precision_plan``'s docstring.
With ``K`` the kept rows of q / k / v (whole heads; up / gate: kept neurons) and ``C`` the
matching input columns of o (down)::

    W_q' = W_q[K_q], b_q' = b_q[K_q]  (k, v, up, gate alike)     W_o' = W_o[:, C]
    head counts H -> |K_q| / d, KV -> |K_kv| / d:  the view / reshape / expand sizes between
    the projections and o shrink by |K_q| / (H d) (``shrink_axis``; -1 sizes stay)
    o (down) pruned whole or left with no input:  linear(x, W, b) -> expand(b) (zeros
    without a bias); what only it read is removed

The parameters keep their names (a new, smaller tensor each); a parameter read elsewhere too
(tied) is left alone and the linear gets a sliced copy. Meta shapes are propagated again with
fake tensors. Every linear the plan lists and keeps is tagged ``node.meta["lowbit_plan"]``:
``{"linear", "role", "blocks": [(a, b, code, bits), ...], "act"}`` over its kept rows (``act``:
its input choice, ``precision_plan.LinearPlan``), for
``SplitRowBlocks`` and ``QuantizeFormats``. The report (heads and neurons kept per block,
linears removed, parameter counts) goes to ``gm.meta["lowbit_pruning"]``; a graph that has one
is left alone (``modified=False``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fractions import Fraction

import torch
from torch import fx
from torch._guards import detect_fake_mode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from lowbit.errors import ConfigError
from lowbit.passes.fx.shrink_axis import region, shrink_axis
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.patterns import LinearRef, TransformerMap
from lowbit.passes.precision_plan import match_plan
from lowbit.passes.view.fx_graph import shape_of, strip_casts
from lowbit.search.plan import PrecisionPlan

__all__ = ["PLAN_META", "PRUNING_META", "PruneSubgroups"]

aten = torch.ops.aten
PLAN_META = "lowbit_plan"
PRUNING_META = "lowbit_pruning"


def _operand(ref: LinearRef, what: str) -> int | None:
    """Argument index of the weight or bias of ``ref.node``."""
    addmm = ref.node.target == aten.addmm.default
    if what == "weight":
        return 2 if addmm else 1
    if addmm:
        return 0
    return 2 if ref.node.target == aten.linear.default and len(ref.node.args) > 2 else None


def _slice(gm: fx.GraphModule, ref: LinearRef, what: str, axis: str, keep: list[int]) -> None:
    """Keep entries ``keep`` of the weight's rows / columns ([out, in] terms) or the bias."""
    idx = _operand(ref, what)
    if idx is None or ref.node.args[idx] is None:
        return
    attr = strip_casts(ref.node.args[idx])
    if not isinstance(attr, fx.Node) or attr.op != "get_attr":
        raise ConfigError(f"pruning {ref.name}: its {what} is computed in the graph, not a "
                          f"parameter")
    t = gm.get_parameter(attr.target) if attr.target in dict(gm.named_parameters()) \
        else gm.get_buffer(attr.target)
    out_axis = what == "bias" or (axis == "rows") == (ref.weight_layout == "out_in")
    new = torch.nn.Parameter(t.detach().index_select(0 if out_axis else 1, torch.tensor(keep)),
                             requires_grad=False)
    shared = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == attr.target]
    owner_path, _, name = attr.target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if len(shared) == 1 and len(attr.users) == 1:
        new.requires_grad_(t.requires_grad)
        owner._parameters.pop(name, None)
        owner._buffers.pop(name, None)
        owner.register_parameter(name, new)
        return
    copy = f"{name}_pruned"
    while hasattr(owner, copy):
        copy += "_"
    owner.register_parameter(copy, new)
    with gm.graph.inserting_before(ref.node):
        node = gm.graph.get_attr(f"{owner_path}.{copy}" if owner_path else copy)
    ref.node.replace_input_with(ref.node.args[idx], node)


def _to_bias(gm: fx.GraphModule, ref: LinearRef) -> None:
    """``linear(x, W, b) -> expand(b, shape)`` (zeros without a bias)."""
    node, shape = ref.node, shape_of(ref.node)
    val = node.meta.get("val")
    if shape is None or val is None or not all(isinstance(s, int) for s in val.shape):
        raise ConfigError(f"pruning {ref.name} whole needs its static output shape")
    idx = _operand(ref, "bias")
    bias = node.args[idx] if idx is not None else None
    with gm.graph.inserting_before(node):
        if bias is not None:
            new = gm.graph.call_function(aten.expand.default, (bias, list(shape)))
        else:
            new = gm.graph.call_function(aten.zeros.default, (list(shape),),
                                         {"dtype": val.dtype, "device": val.device})
    new.meta["val"] = val
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _dce(gm: fx.GraphModule) -> None:
    """Dead code elimination that also drops metadata asserts on dead values and ATen ops fx
    keeps as seeded-random (SDPA, dropout: their dropout is off in an eval graph)."""
    def impure(n: fx.Node) -> bool:
        if n.target == aten._assert_tensor_metadata.default:
            return len(n.args[0].users) > 1
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
            return n.target._schema.is_mutable
        return n.is_impure()
    while gm.graph.eliminate_dead_code(is_impure_node=impure):
        pass
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)


@dataclasses.dataclass(frozen=True)
class PruneSubgroups(Pass):
    """Remove ``plan``'s pruned heads, neuron blocks and linears; tag the planned linears.
    ``spotter``: reads the graph's ``TransformerMap`` the plan is matched against (None:
    ``find_transformer``)."""

    in_place = True
    plan: PrecisionPlan
    spotter: Callable[[fx.GraphModule], TransformerMap] | None = None

    def call(self, gm: fx.GraphModule) -> PassResult:
        if PRUNING_META in gm.meta:
            return PassResult(gm, False)
        m = match_plan(gm, self.plan, self.spotter)
        before = sum(p.numel() for p in gm.parameters())
        for hp in m.heads:
            a, d = hp.attn, hp.head_dim
            if a.o is None:
                raise ConfigError(f"pruning heads of block {hp.block}: no o projection found")
            rows_q = [h * d + i for h in hp.keep_q for i in range(d)]
            rows_kv = [g * d + i for g in hp.keep_kv for i in range(d)]
            nodes = region([a.q.node, a.k.node, a.v.node], a.o.node)
            shrink_axis(nodes, [a.q.node, a.k.node, a.v.node],
                        Fraction(len(hp.keep_q), a.num_heads), f"heads of block {hp.block}")
            for ref, rows in ((a.q, rows_q), (a.k, rows_kv), (a.v, rows_kv)):
                _slice(gm, ref, "weight", "rows", rows)
                _slice(gm, ref, "bias", "rows", rows)
            _slice(gm, a.o, "weight", "cols", rows_q)
        for npr in m.neurons:
            f = npr.ffn
            ins = [r for r in (f.up, f.gate) if r is not None]
            nodes = region([r.node for r in ins], f.down.node)
            shrink_axis(nodes, [r.node for r in ins],
                        Fraction(len(npr.keep), f.up.out_features), f"neurons of block {npr.block}")
            for ref in ins:
                _slice(gm, ref, "weight", "rows", list(npr.keep))
                _slice(gm, ref, "bias", "rows", list(npr.keep))
            _slice(gm, f.down, "weight", "cols", list(npr.keep))
        for ref in m.removed:
            _to_bias(gm, ref)
        tagged = 0
        for lp in m.linears:
            if lp.blocks:
                lp.ref.node.meta[PLAN_META] = {
                    "linear": lp.ref.name, "role": lp.role,
                    "blocks": [(*b.rows, b.code, b.bits) for b in lp.blocks], "act": lp.act}
                tagged += 1
        if m.pruned:
            _dce(gm)
            placeholders = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
            FakeTensorProp(gm, detect_fake_mode(placeholders)).propagate_dont_convert_inputs(
                *placeholders)
        gm.meta[PRUNING_META] = {
            "heads": {hp.block: list(hp.keep_q) for hp in m.heads},
            "kv_heads": {hp.block: list(hp.keep_kv) for hp in m.heads},
            "neurons": {npr.block: len(npr.keep) for npr in m.neurons},
            "removed": [r.name for r in m.removed], "dead": list(m.dead),
            "params_before": before, "params_after": sum(p.numel() for p in gm.parameters())}
        gm.graph.lint()
        gm.recompile()
        return PassResult(gm, m.pruned or tagged > 0)
