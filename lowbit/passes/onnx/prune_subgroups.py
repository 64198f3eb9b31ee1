"""PruneSubgroups (ONNX): a PrecisionPlan's pruned subgroups leave the graph (smaller GEMMs).

The ONNX twin of ``passes/fx/prune_subgroups.py``; what prunes, and what it equals in float,
is ``lowbit.passes.precision_plan``'s docstring (``match_plan`` reads the plan against the
model's TransformerMap). With ``K`` the kept rows of q / k / v (whole heads; up / gate: kept
neurons) and ``C`` the matching input columns of o (down), on the initializers ([out, in] or
[in, out] as the graph stores them)::

    W_q' = W_q[K_q], b_q' = b_q[K_q]  (k, v, up, gate alike)     W_o' = W_o[:, C]
    head counts H -> |K_q| / d, KV -> |K_kv| / d: the Reshape / Expand targets between the
    projections and o shrink by |K_q| / (H d) (``shrink_axis``: -1 entries and sizes taken
    from Shape at run time follow by themselves)
    o (down) pruned whole or left with no input:
        linear(x) -> Expand(b, Concat(Shape(a)[:-1], [N]))  (zeros without a bias)
    with ``a`` a surviving tensor of x's leading shape (a constant shape when it is static);
    what only the linear read is removed

Initializers keep their names (a new, smaller tensor each); one read elsewhere too (tied) is
left alone and the linear reads a sliced copy. Every linear the plan lists and keeps is tagged
``metadata_props["lowbit.plan"]`` (JSON ``{"linear", "role", "blocks": [[a, b, code, bits],
...], "act"}`` over its kept rows; ``act``: its input choice) for ``SplitRowBlocks`` and ``QuantizeFormats``. The report (heads
and neurons kept per block, linears removed, parameter counts) goes to
``model.meta["lowbit_pruning"]`` and ``metadata_props["lowbit.pruning"]`` (JSON); a model that
has one is left alone (``modified=False``).
"""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction

import numpy as np
import onnx_ir as ir

from lowbit.errors import ConfigError
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.edit import add_initializer, remove_dead
from lowbit.passes.onnx.shrink_axis import ProbeShapes, region, shrink_axis
from lowbit.passes.patterns import LinearRef
from lowbit.passes.precision_plan import match_plan
from lowbit.passes.view.onnx_graph import (
    bias_add,
    const_array,
    is_op,
    linear_output,
    number,
    weight_source,
)
from lowbit.search.plan import PrecisionPlan

__all__ = ["PLAN_KEY", "PRUNING_KEY", "PRUNING_META", "PruneSubgroups", "float_params"]

PLAN_KEY = "lowbit.plan"
PRUNING_KEY = "lowbit.pruning"
PRUNING_META = "lowbit_pruning"


def float_params(model: ir.Model) -> int:
    """Elements of the float initializers of rank >= 1 (weights, biases, norms, tables)."""
    return sum(int(np.prod(v.shape)) for v in model.graph.initializers.values()
               if v.dtype is not None and v.dtype.is_floating_point() and v.shape is not None
               and len(v.shape) >= 1)


def _set(graph: ir.Graph, value: ir.Value, reader: ir.Node, arr: np.ndarray) -> None:
    """``value`` (an initializer) becomes ``arr`` for ``reader``: in place when only it reads
    it, else through a copy."""
    arr = np.ascontiguousarray(arr)
    if len({u.node for u in value.uses()}) <= 1 and not value.is_graph_output():
        value.const_value = ir.Tensor(arr, name=value.name)
        value.shape = ir.Shape(arr.shape)
        return
    copy = add_initializer(graph, f"{value.name}_pruned", arr, value.dtype)
    for i, v in enumerate(reader.inputs):
        if v is value:
            reader.replace_input_with(i, copy)


def _slice(graph: ir.Graph, ref: LinearRef, what: str, axis: str, keep: list[int]) -> None:
    """Keep entries ``keep`` of the weight's rows / columns ([out, in] terms) or the bias."""
    idx = np.asarray(keep)
    if what == "bias":
        if ref.bias is None:
            return
        value = graph.initializers[ref.bias]
        reader = ref.node if is_op(ref.node, "Gemm") else bias_add(ref.node, ref.out_features)[1]
        arr = const_array(value)
        _set(graph, value, reader, arr.reshape(-1)[idx].reshape(*arr.shape[:-1], len(keep)))
        return
    src = weight_source(ref.node, 1)
    if src is None or src.value is None or src.quantized:
        raise ConfigError(f"pruning {ref.name}: its weight is not a float initializer")
    out_axis = 0 if ref.weight_layout == "out_in" else 1
    _set(graph, src.value, src.reader,
         np.take(const_array(src.value), idx, axis=out_axis if axis == "rows" else 1 - out_axis))


def _anchor(x: ir.Value) -> ir.Value | None:
    """A tensor with ``x``'s leading shape that outlives the linear: walking back from ``x``,
    the first one read off the walk."""
    want = x.shape[:-1] if x.shape is not None else None
    if want is None or any(d is None for d in want):
        return None
    cone, frontier = set(), [x]
    while frontier:
        v = frontier.pop(0)
        p = v.producer()
        users = {u.node for u in v.uses()}
        if v is not x and (users - cone or v.is_graph_input()) and v.shape is not None \
                and tuple(str(d) for d in v.shape[:-1]) == tuple(str(d) for d in want):
            return v
        if p is not None and p not in cone:
            cone.add(p)
            frontier.extend(i for i in p.inputs if i is not None and const_array(i) is None)
    return None


def _to_bias(graph: ir.Graph, ref: LinearRef) -> None:
    """The linear's output -> its bias broadcast to that output's shape (zeros without one)."""
    out, x, n = linear_output(ref), ref.node.inputs[0], ref.out_features
    bias = const_array(graph.initializers[ref.bias]) if ref.bias else None
    b = add_initializer(graph, f"{ref.name}.pruned_output",
                        np.broadcast_to(np.zeros(n, np.float32) if bias is None
                                        else bias.reshape(-1).astype(np.float32), (n,)).copy(),
                        ir.DataType.FLOAT)
    lead = x.shape[:-1] if x.shape is not None else None
    nodes = []
    if lead is not None and all(isinstance(d, int) for d in lead):
        shape = add_initializer(graph, f"{ref.name}.pruned_shape",
                                np.array([*lead, n], np.int64), ir.DataType.INT64)
    else:
        anchor = _anchor(x)
        if anchor is None:
            raise ConfigError(f"pruning {ref.name} whole: no tensor outside it has its "
                              f"output's leading shape {lead}; export with static shapes")
        width = add_initializer(graph, f"{ref.name}.pruned_width", np.array([n], np.int64),
                                ir.DataType.INT64)
        lead_shape = ir.node("Shape", [anchor], attributes={"end": -1},
                             name=f"{ref.name}/pruned/Shape")
        cat = ir.node("Concat", [lead_shape.outputs[0], width], attributes={"axis": 0},
                      name=f"{ref.name}/pruned/Concat")
        nodes += [lead_shape, cat]
        shape = cat.outputs[0]
        lead_shape.outputs[0].name = f"{ref.name}.pruned_lead"
        shape.name = f"{ref.name}.pruned_shape"
    expand = ir.node("Expand", [b, shape], name=f"{ref.name}/pruned/Expand")
    nodes.append(expand)
    new = expand.outputs[0]
    new.name, new.shape, new.type = f"{ref.name}.pruned_out", out.shape, out.type
    graph.insert_before(ref.node, nodes)
    ir.convenience.replace_all_uses_with(out, new)
    for i, o in enumerate(graph.outputs):
        if o is out:
            graph.outputs[i] = new
            new.name, out.name = out.name, f"{out.name}_pruned"
    remove_dead(graph, out.producer())


@dataclasses.dataclass(frozen=True)
class PruneSubgroups(Pass):
    """Remove ``plan``'s pruned heads, neuron blocks and linears; tag the planned linears."""

    in_place = True
    plan: PrecisionPlan

    def call(self, model: ir.Model) -> PassResult:
        if PRUNING_KEY in model.metadata_props:
            return PassResult(model, False)
        graph = model.graph
        m = match_plan(model, self.plan)
        shapes, before = ProbeShapes(model), float_params(model)
        groups = [(f"heads of block {hp.block}", [hp.attn.q, hp.attn.k, hp.attn.v], hp.attn.o,
                   Fraction(len(hp.keep_q), hp.attn.num_heads), hp.head_dim,
                   [[h * hp.head_dim + i for h in keep for i in range(hp.head_dim)]
                    for keep in (hp.keep_q, hp.keep_kv, hp.keep_kv)]) for hp in m.heads]
        groups += [(f"neurons of block {npr.block}", [r for r in (npr.ffn.up, npr.ffn.gate) if r],
                    npr.ffn.down, Fraction(len(npr.keep), npr.ffn.up.out_features), 1,
                    [list(npr.keep)] * 2) for npr in m.neurons]
        for what, ins, sink, ratio, inner, rows in groups:
            if sink is None:
                raise ConfigError(f"pruning {what}: no o projection found")
            number(graph)
            nodes = region([r.node for r in ins], sink.node, what)
            biases = [graph.initializers[r.bias] for r in ins if r.bias]
            shrink_axis(graph, nodes, {r.node: inner for r in ins}, ratio, shapes, what, biases)
            for ref, keep in zip(ins, rows):
                _slice(graph, ref, "bias", "rows", keep)    # bias_add reads the old width
                _slice(graph, ref, "weight", "rows", keep)
            _slice(graph, sink, "weight", "cols", rows[0])
        for ref in m.removed:
            _to_bias(graph, ref)
        tagged = 0
        for lp in m.linears:
            if lp.blocks:
                lp.ref.node.metadata_props[PLAN_KEY] = json.dumps({
                    "linear": lp.ref.name, "role": lp.role,
                    "blocks": [[*b.rows, b.code, b.bits] for b in lp.blocks],
                    "act": lp.act})
                tagged += 1
        if m.pruned:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        report = {
            "heads": {hp.block: list(hp.keep_q) for hp in m.heads},
            "kv_heads": {hp.block: list(hp.keep_kv) for hp in m.heads},
            "neurons": {npr.block: len(npr.keep) for npr in m.neurons},
            "removed": [r.name for r in m.removed], "dead": list(m.dead),
            "params_before": before, "params_after": float_params(model)}
        model.meta[PRUNING_META] = report
        model.metadata_props[PRUNING_KEY] = json.dumps(report)
        return PassResult(model, m.pruned or tagged > 0)
