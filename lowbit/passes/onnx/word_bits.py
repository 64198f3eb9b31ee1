"""QuantizeWordBits (ONNX): the word table becomes ``lowbit.TieredEmbedding`` and its tied head
``lowbit.TieredLinear``, each with its decomposition as a model-local function.

    Gather(E, Ids)                        ->  lowbit.TieredEmbedding(Ids, Pos, P0, A0, O0, .., P3, A3, O3)
    MatMul(X, Transpose(E)) [+ Add(b)]    ->  lowbit.TieredLinear(X, Pos, P0, A0, O0, .., P3, A3, O3, Bias)
    Gemm(X, E, b, transB=1)               ->  (the same)

The nodes (domain ``lowbit``, version 1) have the semantics of ``lowbit::tiered_embedding`` /
``lowbit::tiered_linear`` (lowbit/quant/word_ops.py) with a fixed arity: always
``MAX_TIERS = 4`` tiers (a plan has at most 4: bits strictly descending in 1..4), the unused
ones empty (0 rows), every Offset present (zeros where the fit has none), Bias present (zeros)::

    Ids     int64 [...]                   Pos   int32 [V]   (token id -> tier-concatenated row)
    Pt      uint8 [q_t, n_t, D/8]         At    float32 [n_t, 1, q_t]     Ot  float32 [n_t, 1]
    W_t = sum_i At[:, 0, i] * B_t,i + Ot  [n_t, D]            (B from the bits of Pt, in {-1, +1})
    TieredEmbedding:  Y = Gather(Concat_t(W_t), Gather(Pos, Ids))                 [..., D]
    TieredLinear:     Y = Gather(Concat_t(X @ W_t^T), Pos, axis=-1) + Bias         [..., V]

The decompositions (standard ops of opset >= 18: BitShift, BitwiseAnd, Cast, Reshape with
``allowzero``, ReduceSum, Concat, Gather, MatMul) are the simplest correct forms: the
embedding dequantizes every tier table and gathers from their concatenation (a runtime pays
the whole table per call; lowbit's TVM frontend maps the node to a row-gather kernel instead);
the head runs one MatMul per tier, concatenates in tier order and gathers the logits back into
vocabulary order. The site comes from ``plan_word_bits`` (``lowbit.passes.word_bits``, shared
with FX: the same table gives bit-identical codes); the report is in
``metadata_props["lowbit.word_bits"]`` (JSON). The float table initializer (and a Transpose of
it) is dropped when nothing else reads it. A model holding tiered nodes already is left alone.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from lowbit.errors import ConfigError
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.edit import add_initializer, drop_if_unused, remove_dead
from lowbit.passes.word_bits import WordBitsSite, check_word_bits_options, plan_word_bits
from lowbit.quant import bcq
from lowbit.quant.word_bits import TieredEmbedding, WordBitsPlan
from lowbit.quant.word_ops import tiered_operands

__all__ = ["MAX_TIERS", "WB_DOMAIN", "WB_EMBEDDING", "WB_LINEAR", "WB_MIN_OPSET",
           "QuantizeWordBits", "add_word_bits_functions", "empty_tier", "word_bits_functions",
           "word_bits_nodes"]

WB_DOMAIN, WB_EMBEDDING, WB_LINEAR = "lowbit", "TieredEmbedding", "TieredLinear"
WB_MIN_OPSET = 18    # BitwiseAnd
MAX_TIERS = bcq.MAX_BITS
TIER_INPUTS = [f"{k}{t}" for t in range(MAX_TIERS) for k in ("P", "A", "O")]


def word_bits_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.domain == WB_DOMAIN and n.op_type in (WB_EMBEDDING, WB_LINEAR)]


def empty_tier(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(planes, alpha, offset) of a tier with no rows: [1, 0, D/8], [0, 1, 1], [0, 1]."""
    return (np.zeros((1, 0, d // 8), np.uint8), np.zeros((0, 1, 1), np.float32),
            np.zeros((0, 1), np.float32))


def _constants() -> list:
    c, i64 = helper.make_node, TensorProto.INT64
    return [
        c("Constant", [], ["shifts"], value=helper.make_tensor(
            "shifts", TensorProto.UINT8, [8], list(range(8)))),
        c("Constant", [], ["one_u8"], value=helper.make_tensor("one_u8", TensorProto.UINT8, [], [1])),
        c("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
        c("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])),
        c("Constant", [], ["eight"], value=helper.make_tensor("eight", i64, [1], [8])),
        c("Constant", [], ["last"], value=helper.make_tensor("last", i64, [1], [-1])),
        c("Constant", [], ["axis0"], value=helper.make_tensor("axis0", i64, [1], [0])),
    ]


def _tier_table(t: int) -> list:
    """Nodes computing ``W{t}`` [n_t, D] from ``P{t}``, ``A{t}``, ``O{t}``."""
    c, s = helper.make_node, f"_{t}"
    return [
        c("Unsqueeze", [f"P{t}", "last"], ["p4" + s]),                    # [q, n, D/8, 1]
        c("BitShift", ["p4" + s, "shifts"], ["sh" + s], direction="RIGHT"),
        c("BitwiseAnd", ["sh" + s, "one_u8"], ["bits" + s]),
        c("Cast", ["bits" + s], ["bits_f" + s], to=TensorProto.FLOAT),
        c("Mul", ["bits_f" + s, "two"], ["twice" + s]),
        c("Sub", ["twice" + s, "one"], ["signs4" + s]),                    # [q, n, D/8, 8]
        c("Shape", [f"P{t}"], ["qn" + s], start=0, end=2),
        c("Shape", [f"P{t}"], ["kb" + s], start=2, end=3),
        c("Mul", ["kb" + s, "eight"], ["d" + s]),
        c("Concat", ["qn" + s, "d" + s], ["s3" + s], axis=0),
        c("Reshape", ["signs4" + s, "s3" + s], ["signs" + s], allowzero=1),  # [q, n, D]
        c("Transpose", [f"A{t}"], ["alpha_q" + s], perm=[2, 0, 1]),        # [q, n, 1]
        c("Mul", ["signs" + s, "alpha_q" + s], ["terms" + s]),
        c("ReduceSum", ["terms" + s, "axis0"], ["w" + s], keepdims=0),      # [n, D]
        c("Add", ["w" + s, f"O{t}"], [f"W{t}"]),
    ]


def _function(name: str, inputs: list[str], body: list, opset: int, doc: str) -> ir.Function:
    proto = helper.make_function(WB_DOMAIN, name, inputs, ["Y"], body,
                                 [helper.make_opsetid("", opset)], doc_string=doc)
    return ir.serde.deserialize_function(proto)


def word_bits_functions(opset: int) -> list[ir.Function]:
    """The decompositions of ``TieredEmbedding`` and ``TieredLinear`` (module docstring)."""
    c, tiers = helper.make_node, range(MAX_TIERS)
    tables = [n for t in tiers for n in _tier_table(t)]
    emb = _constants() + tables + [
        c("Concat", [f"W{t}" for t in tiers], ["table"], axis=0),          # [V, D], tier order
        c("Gather", ["Pos", "Ids"], ["rows"], axis=0),
        c("Gather", ["table", "rows"], ["Y"], axis=0),
    ]
    lin = _constants() + tables + [n for t in tiers for n in (
        c("Transpose", [f"W{t}"], [f"Wt{t}"], perm=[1, 0]),
        c("MatMul", ["X", f"Wt{t}"], [f"Y{t}"]))] + [
        c("Concat", [f"Y{t}" for t in tiers], ["ycat"], axis=-1),         # [..., V], tier order
        c("Gather", ["ycat", "Pos"], ["yv"], axis=-1),
        c("Add", ["yv", "Bias"], ["Y"]),
    ]
    return [_function(WB_EMBEDDING, ["Ids", "Pos", *TIER_INPUTS], emb, opset,
                      "Per-word mixed-precision embedding lookup (lowbit/passes/onnx/word_bits.py)"),
            _function(WB_LINEAR, ["X", "Pos", *TIER_INPUTS, "Bias"], lin, opset,
                      "Tied LM head over the tiers (lowbit/passes/onnx/word_bits.py)")]


def add_word_bits_functions(model: ir.Model) -> bool:
    """Give ``model`` the decompositions when its graph holds tiered nodes; returns whether."""
    if not word_bits_nodes(model.graph):
        return False
    for fn in word_bits_functions(int(model.opset_imports.get("", WB_MIN_OPSET))):
        model.functions[fn.identifier()] = fn
    model.opset_imports[WB_DOMAIN] = 1
    return True


def _initializers(graph: ir.Graph, stem: str, ops: dict, prefix: str, shared: list | None
                  ) -> list[ir.Value]:
    """The ``P0, A0, O0, ..`` inputs (planes from ``shared`` when given), padded to 4 tiers."""
    f32, u8 = ir.DataType.FLOAT, ir.DataType.UINT8
    d = 8 * ops["planes"][0].shape[-1]
    out = []
    for t in range(MAX_TIERS):
        if t < len(ops["planes"]):
            p, a, o = (x.numpy() for x in (ops["planes"][t], ops["alpha"][t], ops["offset"][t]))
            n = a.shape[0]
            o = o.reshape(n, 1) if o.size else np.zeros((n, 1), np.float32)
        else:
            p, a, o = empty_tier(d)
        planes = shared[3 * t] if shared is not None else add_initializer(
            graph, f"{stem}.wb_planes_{t}", p, u8)
        out += [planes, add_initializer(graph, f"{stem}.{prefix}alpha_{t}", a, f32),
                add_initializer(graph, f"{stem}.{prefix}offset_{t}", o, f32)]
    return out


def _replace(graph: ir.Graph, node: ir.Node, out: ir.Value, op_type: str, inputs: list,
             name: str) -> None:
    new = ir.node(op_type, inputs, domain=WB_DOMAIN, name=name)
    new.outputs[0].shape, new.outputs[0].type = out.shape, out.type
    graph.insert_before(node, new)
    if out.is_graph_output():       # the output keeps its name: rename the old value first
        outputs = graph.outputs
        for i, o in enumerate(outputs):
            if o is out:
                outputs[i] = new.outputs[0]
        name, out.name = out.name, f"{out.name}_float"
        new.outputs[0].name = name
    ir.convenience.replace_all_uses_with(out, new.outputs[0])
    remove_dead(graph, out.producer())


def _rewrite(model: ir.Model, site: WordBitsSite) -> None:
    graph, stem = model.graph, site.embedding.name
    ops = tiered_operands(site.tiers)
    pos = add_initializer(graph, f"{stem}.wb_pos", ops["pos"].numpy(), ir.DataType.INT32)
    tiers = _initializers(graph, stem, ops, "wb_", None)
    for node in site.lookups:
        _replace(graph, node, node.outputs[0], WB_EMBEDDING, [node.inputs[1], pos, *tiers],
                 f"{stem}.tiered_embedding")
    head = tiers if site.head == "tied" or not site.heads else _initializers(
        graph, stem, ops, "wb_head_", tiers)
    v = site.tiers.plan.vocab_size
    for ref, out in site.heads:
        node = ref.node
        if node.op_type == "Gemm" and (node.attributes.get_float("alpha", 1.0) != 1.0
                                       or node.attributes.get_float("beta", 1.0) != 1.0):
            raise ConfigError(f"{ref.name}: a tied head Gemm with alpha/beta != 1 is not "
                              f"converted (QuantizeWordBits(head='float') keeps it)")
        b = (np.asarray(graph.initializers[ref.bias].const_value.numpy(), np.float32)
             if ref.bias is not None else np.zeros(v, np.float32))
        bias = add_initializer(graph, f"{ref.name}.wb_bias", b.reshape(v), ir.DataType.FLOAT)
        _replace(graph, node, out, WB_LINEAR, [node.inputs[0], pos, *head, bias],
                 f"{ref.name}.tiered_linear")
    if site.drop:
        drop_if_unused(graph, graph.initializers.get(site.embedding.weight))


@dataclasses.dataclass(frozen=True)
class QuantizeWordBits(Pass):
    """Per-word mixed-precision word table (module docstring; ``lowbit.passes.word_bits``)."""

    in_place = True
    plan: WordBitsPlan | TieredEmbedding
    head: str = "tied"
    iters: int = bcq.DEFAULT_ITERS
    progress: bool = True

    def __post_init__(self) -> None:
        check_word_bits_options(self.plan, self.head)

    def requires(self, model: ir.Model) -> None:
        if not isinstance(model, ir.Model):
            raise ConfigError(f"QuantizeWordBits (ONNX) takes an onnx_ir.Model, got "
                              f"{type(model).__name__}")
        opset = int(model.opset_imports.get("", 0))
        if opset < WB_MIN_OPSET:
            raise ConfigError(f"the TieredEmbedding / TieredLinear decompositions need opset >= "
                              f"{WB_MIN_OPSET}; the model has {opset} (UpgradeOpset first)")

    def call(self, model: ir.Model) -> PassResult:
        if word_bits_nodes(model.graph):
            return PassResult(model, False)
        site = plan_word_bits(model, self.plan, head=self.head, iters=self.iters,
                              progress=self.progress)
        _rewrite(model, site)
        add_word_bits_functions(model)
        model.metadata_props["lowbit.word_bits"] = json.dumps(site.summary())
        return PassResult(model, True)
