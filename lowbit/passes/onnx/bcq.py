"""QuantizeBCQ (ONNX): each linear of a weight-only BCQ recipe becomes one ``lowbit.BCQLinear``.

    MatMul(X, W) [+ Add(bias)]   ->  lowbit.BCQLinear(X, Planes, Alpha, Offset, Bias)
    Gemm(X, W, C)                ->  lowbit.BCQLinear(X, Planes, Alpha, Offset, C)

``BCQLinear`` (domain ``lowbit``, version 1) has the semantics of ``lowbit::bcq_linear``
(lowbit/quant/bcq_linear.py) with every input present (a zero Offset / Bias where the fit or
the layer has none)::

    X       float32 [.., K]
    Planes  uint8 [q, N, K/8]     bit j of byte c is B_i[n, 8c + j] > 0   (B in {-1, +1})
    Alpha   float32 [N, G, q]     g = K / G
    Offset  float32 [N, G]
    Bias    float32 [N]
    Y = X @ W'^T + Bias,   W'[n, k] = sum_i Alpha[n, k // g, i] B_i[n, k] + Offset[n, k // g]

The model carries the op's decomposition as a model-local function (``BCQ_FUNCTION``, standard
ops of opset >= 18: BitShift, BitwiseAnd, Cast, Reshape, ReduceSum, MatMul), so onnxruntime and
every ONNX runtime that inlines local functions run it as is; lowbit's TVM frontend maps the
node to its bit-plane kernel instead. The fits come from ``plan_bcq`` (``lowbit.passes.bcq``,
shared with FX: the same weights give bit-identical codes); the report is in
``metadata_props["lowbit.bcq"]`` (JSON). The float weight initializer (and a Transpose of it)
is dropped when nothing else reads it. A model holding BCQLinear nodes already is left alone.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from lowbit.config import Recipe
from lowbit.errors import ConfigError
from lowbit.passes.bcq import BCQSite, bcq_spec, plan_bcq
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.edit import add_initializer, remove_dead
from lowbit.quant.bcq import pack_planes

__all__ = ["BCQ_DOMAIN", "BCQ_MIN_OPSET", "BCQ_OP", "QuantizeBCQ", "bcq_function", "bcq_nodes",
           "replace_with_bcq"]

BCQ_DOMAIN, BCQ_OP = "lowbit", "BCQLinear"
BCQ_MIN_OPSET = 18   # BitwiseAnd


def bcq_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.domain == BCQ_DOMAIN and n.op_type == BCQ_OP]


def bcq_function(opset: int) -> ir.Function:
    """The decomposition of ``BCQLinear`` into standard ops of ``opset`` (module docstring)."""
    c = helper.make_node
    i64 = TensorProto.INT64
    nodes = [
        c("Constant", [], ["shifts"], value=helper.make_tensor(
            "shifts", TensorProto.UINT8, [8], list(range(8)))),
        c("Constant", [], ["one_u8"], value=helper.make_tensor("one_u8", TensorProto.UINT8, [], [1])),
        c("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
        c("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])),
        c("Constant", [], ["last"], value=helper.make_tensor("last", i64, [1], [-1])),
        c("Constant", [], ["axis0"], value=helper.make_tensor("axis0", i64, [1], [0])),
        # bits [q, N, K/8, 8] -> signs in {-1, +1}
        c("Unsqueeze", ["Planes", "last"], ["p4"]),
        c("BitShift", ["p4", "shifts"], ["shifted"], direction="RIGHT"),
        c("BitwiseAnd", ["shifted", "one_u8"], ["bits"]),
        c("Cast", ["bits"], ["bits_f"], to=TensorProto.FLOAT),
        c("Mul", ["bits_f", "two"], ["twice"]),
        c("Sub", ["twice", "one"], ["signs"]),
        # [q, N, G, g]
        c("Shape", ["Planes"], ["qn"], start=0, end=2),
        c("Shape", ["Alpha"], ["g_count"], start=1, end=2),
        c("Concat", ["qn", "g_count", "last"], ["s4"], axis=0),
        c("Reshape", ["signs", "s4"], ["signs4"]),
        # sum_i alpha_i B_i + offset: [N, G, g]
        c("Transpose", ["Alpha"], ["alpha_q"], perm=[2, 0, 1]),
        c("Unsqueeze", ["alpha_q", "last"], ["alpha4"]),
        c("Mul", ["signs4", "alpha4"], ["terms"]),
        c("ReduceSum", ["terms", "axis0"], ["w3"], keepdims=0),
        c("Unsqueeze", ["Offset", "last"], ["off3"]),
        c("Add", ["w3", "off3"], ["w3o"]),
        c("Shape", ["Alpha"], ["n_count"], start=0, end=1),
        c("Concat", ["n_count", "last"], ["s2"], axis=0),
        c("Reshape", ["w3o", "s2"], ["w"]),
        c("Transpose", ["w"], ["wt"], perm=[1, 0]),
        c("MatMul", ["X", "wt"], ["xw"]),
        c("Add", ["xw", "Bias"], ["Y"]),
    ]
    proto = helper.make_function(
        BCQ_DOMAIN, BCQ_OP, ["X", "Planes", "Alpha", "Offset", "Bias"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        doc_string="BCQ linear: Y = X @ (sum_i Alpha_i B_i + Offset)^T + Bias "
                   "(lowbit/passes/onnx/bcq.py)")
    return ir.serde.deserialize_function(proto)


def _default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", 0))


def replace_with_bcq(model: ir.Model, site: BCQSite) -> None:
    graph, node, fit = model.graph, site.ref.node, site.fit
    n, groups = fit.shape[0], fit.groups
    if node.op_type == "Gemm" and (node.attributes.get_float("alpha", 1.0) != 1.0
                                   or node.attributes.get_float("beta", 1.0) != 1.0):
        raise ConfigError(f"{site.ref.name}: Gemm with alpha/beta != 1 is not converted to BCQ "
                          f"(ignore this layer: Recipe.ignore)")
    stem = site.ref.name
    f32 = ir.DataType.FLOAT
    planes = add_initializer(graph, f"{stem}.bcq_planes",
                             pack_planes(fit.planes_i8).numpy(), ir.DataType.UINT8)
    alpha = add_initializer(graph, f"{stem}.bcq_alpha",
                            fit.alpha_f32.contiguous().numpy(), f32)
    off = (fit.offset_f32.numpy() if fit.offset_f32 is not None
           else np.zeros((n, groups), np.float32))
    offset = add_initializer(graph, f"{stem}.bcq_offset", off.astype(np.float32), f32)
    if site.ref.bias is not None:
        bias_arr = np.asarray(graph.initializers[site.ref.bias].const_value.numpy(), np.float32)
    else:
        bias_arr = np.zeros(n, np.float32)
    bias = add_initializer(graph, f"{stem}.bcq_bias", bias_arr.reshape(n), f32)
    out: ir.Value = site.out
    new = ir.node(BCQ_OP, [node.inputs[0], planes, alpha, offset, bias], domain=BCQ_DOMAIN,
                  name=f"{stem}.bcq")
    new.outputs[0].shape, new.outputs[0].type = out.shape, out.type
    graph.insert_before(node, new)
    ir.convenience.replace_all_uses_with(out, new.outputs[0])
    if out.is_graph_output():
        outputs = graph.outputs
        for i, o in enumerate(outputs):
            if o is out:
                outputs[i] = new.outputs[0]
        new.outputs[0].name, out.name = out.name, f"{out.name}_float"
    remove_dead(graph, out.producer())


@dataclasses.dataclass(frozen=True)
class QuantizeBCQ(Pass):
    """Replace the recipe's linears with ``lowbit.BCQLinear`` (module docstring)."""

    in_place = True
    recipe: Recipe
    progress: bool = True

    def requires(self, model: ir.Model) -> None:
        bcq_spec(self.recipe)
        if not isinstance(model, ir.Model):
            raise ConfigError(f"QuantizeBCQ (ONNX) takes an onnx_ir.Model, got "
                              f"{type(model).__name__}")
        if _default_opset(model) < BCQ_MIN_OPSET:
            raise ConfigError(f"BCQLinear's decomposition needs opset >= {BCQ_MIN_OPSET}; the "
                              f"model has {_default_opset(model)} (UpgradeOpset first)")

    def call(self, model: ir.Model) -> PassResult:
        if bcq_nodes(model.graph):
            return PassResult(model, False)
        sites = plan_bcq(model, self.recipe, progress=self.progress)
        for site in sites:
            replace_with_bcq(model, site)
        if sites:
            fn = bcq_function(_default_opset(model))
            model.functions[fn.identifier()] = fn
            model.opset_imports[BCQ_DOMAIN] = 1
            report = [s.summary() for s in sites]
            model.metadata_props["lowbit.bcq"] = json.dumps(report)
        return PassResult(model, bool(sites))

