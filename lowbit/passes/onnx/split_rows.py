"""SplitRowBlocks (ONNX): a linear whose row blocks take different formats becomes one linear per
block, their outputs concatenated, so that each block can be served by its own kernel.

The ONNX twin of ``passes/fx/split_rows.py``::

    MatMul(x, W) [+ b] | Gemm(x, W, b),  blocks [a_0, a_1), [a_1, a_2), ...  ("lowbit.plan")
        -> Concat(MatMul(x, W_0) [+ b[a_0:a_1]], MatMul(x, W_1) [+ b[a_1:a_2]], ..., axis=-1)
           W_i = W[a_i:a_{i+1}]^T  ([in, out_i], whatever layout W had)

Exact in float (each output column is the same dot product). The block weights are new
initializers ``<linear>.weight_rows_<a>_<b>`` (``.bias_rows_<a>_<b>``); the old weight goes
when nothing else reads it. Each new MatMul carries its one block in ``metadata_props
["lowbit.plan"]`` (``rows``: its rows in the whole linear). Untagged linears and single-block
ones are left alone, so a second run reports ``modified=False``. Refused (ConfigError): a Gemm
with alpha / beta != 1 or transA, a weight computed in the graph.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir

from lowbit.errors import ConfigError
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.edit import add_initializer, remove_dead
from lowbit.passes.onnx.prune_subgroups import PLAN_KEY
from lowbit.passes.onnx.shrink_axis import unique_name
from lowbit.passes.patterns import LinearRef
from lowbit.passes.view import view_of
from lowbit.passes.view.onnx_graph import is_op

__all__ = ["SplitRowBlocks", "linear_ref", "planned_linears", "weight_out_in"]


def planned_linears(model: ir.Model) -> list[tuple[ir.Node, dict]]:
    """(node, its plan tag) of every tagged linear, graph order."""
    return [(n, json.loads(n.metadata_props[PLAN_KEY])) for n in model.graph
            if PLAN_KEY in n.metadata_props]


def linear_ref(model: ir.Model, node: ir.Node, name: str) -> LinearRef:
    ref = view_of(model).linear(node)
    if not isinstance(ref, LinearRef):
        why = getattr(ref, "reason", "not a linear with a weight initializer")
        raise ConfigError(f"{name}: {why}")
    if is_op(node, "Gemm") and (node.attributes.get_float("alpha", 1.0) != 1.0
                                or node.attributes.get_float("beta", 1.0) != 1.0):
        raise ConfigError(f"{name}: Gemm with alpha/beta != 1 does not split into row blocks")
    ref.name = name
    return ref


def weight_out_in(model: ir.Model, ref: LinearRef) -> np.ndarray:
    """The weight of ``ref`` as float32 [out, in]."""
    w = np.asarray(model.graph.initializers[ref.weight].const_value.numpy(), np.float32)
    return w if ref.weight_layout == "out_in" else w.T


@dataclasses.dataclass(frozen=True)
class SplitRowBlocks(Pass):
    """Split tagged linears into per-format row blocks (module docstring)."""

    in_place = True

    def call(self, model: ir.Model) -> PassResult:
        graph, changed = model.graph, 0
        for node, tag in planned_linears(model):
            if len(tag["blocks"]) == 1:
                continue
            name = tag["linear"]
            ref = linear_ref(model, node, name)
            out = view_of(model).linear_out(ref)
            w = weight_out_in(model, ref)
            b = (np.asarray(graph.initializers[ref.bias].const_value.numpy(), np.float32)
                 .reshape(-1) if ref.bias else None)
            x, parts = node.inputs[0], []
            for a, e, code, bits in tag["blocks"]:
                stem = f"{name}.weight_rows_{a}_{e}"
                wv = add_initializer(graph, stem, np.ascontiguousarray(w[a:e].T),
                                     ir.DataType.FLOAT)
                mm = ir.node("MatMul", [x, wv], name=unique_name(graph, f"{stem}/MatMul",
                                                                 nodes=True))
                mm.metadata_props[PLAN_KEY] = json.dumps(
                    {**tag, "blocks": [[a, e, code, bits]], "rows": [a, e]})
                y = mm.outputs[0]
                y.name = unique_name(graph, f"{name}.rows_{a}_{e}")
                graph.insert_before(node, mm)
                if b is not None:
                    bv = add_initializer(graph, f"{name}.bias_rows_{a}_{e}", b[a:e].copy(),
                                         ir.DataType.FLOAT)
                    add = ir.node("Add", [y, bv], name=unique_name(graph, f"{stem}/Add",
                                                                   nodes=True))
                    add.outputs[0].name = unique_name(graph, f"{name}.rows_{a}_{e}_biased")
                    graph.insert_before(node, add)
                    y = add.outputs[0]
                if out.shape is not None:
                    y.shape = ir.Shape([*out.shape.dims[:-1], e - a])
                y.type = out.type
                parts.append(y)
            cat = ir.node("Concat", parts, attributes={"axis": -1},
                          name=unique_name(graph, f"{name}/rows/Concat", nodes=True))
            new = cat.outputs[0]
            new.name = unique_name(graph, f"{name}.rows")
            new.shape, new.type = out.shape, out.type
            graph.insert_before(node, cat)
            ir.convenience.replace_all_uses_with(out, new)
            for i, o in enumerate(graph.outputs):
                if o is out:
                    graph.outputs[i] = new
                    new.name, out.name = out.name, f"{out.name}_unsplit"
            remove_dead(graph, out.producer())
            changed += 1
        return PassResult(model, changed > 0)
