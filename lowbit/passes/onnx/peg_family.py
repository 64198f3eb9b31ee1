"""Channel families on ONNX graphs, for PegPermute (``peg_permute.py`` says what is folded).

From a seed value with C channels on its last axis, ``Family`` collects every value connected
to it through ops that treat that axis channel by channel, and classifies what touches them:

    members     elementwise unary / binary ops (the other operand broadcast on the last axis
                or itself in the family), LayerNormalization / RMSNormalization over the last
                axis, Reshape / (Un)Squeeze / Expand / Transpose keeping it, Gather / Slice off it
    params      initializers a member reads with C channels last (biases, gains, embedding
                tables read by Gather on axis 0)
    producers   MatMul / Gemm with an initializer weight read by nothing else
    sinks       MatMul / Gemm reading a member as the activation (weight not shared, or tied to
                a table the family reads, stored [V, C]: permuted once for both)
    order-free  Reduce* over the last axis alone with keepdims (decomposed norms), the
                target-type input of CastLike
    gathers     everything else: graph inputs / outputs, other producers and readers, shared
                tables (``gather_in`` / ``gather_out`` with the reason); a shared channel
                vector is copied instead (``copies``)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lowbit.passes.onnx.fold_channel_scales import linear_weight, shared_reason
from lowbit.passes.onnx.graph_utils import const_array, data_users, is_op, shape_of

__all__ = ["Family"]

_UNARY = frozenset({"Gelu", "Erf", "Tanh", "Relu", "Sigmoid", "Neg", "Cast", "Identity",
                    "Dropout", "Sqrt", "Reciprocal", "Exp", "Abs", "Softplus", "HardSigmoid"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
_NORMS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"})
_KEEP = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Expand", "Flatten"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2",
                     "ReduceSumSquare", "ReduceL1"})


def _last(v: ir.Value | None):
    s = shape_of(v)
    return s[-1] if s else None


def _rank(v: ir.Value | None) -> int | None:
    s = shape_of(v)
    return None if s is None else len(s)


def _axes(node: ir.Node, index: int) -> list[int] | None:
    """The constant ``axes`` of a Reduce / Slice (attribute or input ``index``), or None."""
    if (a := node.attributes.get("axes")) is not None:
        return list(a.as_ints())
    if len(node.inputs) > index and node.inputs[index] is not None:
        arr = const_array(node.inputs[index])
        return None if arr is None else [int(x) for x in arr.reshape(-1)]
    return None


def _reduces_last_only(node: ir.Node, rank: int | None) -> bool:
    if not is_op(node, *_REDUCE) or rank is None or not node.attributes.get_int("keepdims", 1):
        return False
    axes = _axes(node, 1)
    return axes is not None and [a % rank for a in axes] == [rank - 1]


class Family:
    """Discovery of one channel family (module docstring) from a seed value."""

    def __init__(self, seed: ir.Value):
        self.c = _last(seed)
        self.values: set = {seed}
        self.nodes: list[ir.Node] = []          # channel-wise members (norms included)
        self.params: dict = {}                  # initializer -> {member readers}
        self.copies: dict = {}                  # shared small initializer -> {member readers}
        self.tied: list = []                    # (value, consumer, user order) of tied weights
        self.tied_sinks: set = set()            # consumers whose weight is a permuted param
        self.producers: list[ir.Node] = []      # linears whose output channels permute
        self.sinks: list[ir.Node] = []
        self.gather_in: dict = {}               # value -> [(reader, reason)]
        self.gather_out: dict = {}              # value -> [(reader | None, reason)]
        queue = [seed]
        while queue:
            v = queue.pop()
            self._backward(v, queue)
            self._forward(v, queue)

    def _carries(self, v: ir.Value | None) -> bool:
        return v is not None and _last(v) == self.c

    def _stream_inputs(self, n: ir.Node) -> list[ir.Value] | None:
        """The inputs of ``n`` carrying the family's channels, if ``n`` is channel-wise."""
        if not n.outputs or not self._carries(n.outputs[0]) or n.domain not in ("", "ai.onnx"):
            return None
        t, x = n.op_type, n.inputs[0] if n.inputs else None
        rank = _rank(x)
        if t in _UNARY or t == "CastLike":         # CastLike reads its 2nd input's dtype only
            return [x] if self._carries(x) else None
        if t in _BINARY and len(n.inputs) == 2:
            out = []
            for a in n.inputs:
                if self._carries(a):
                    out.append(a)
                elif _last(a) not in (None, 1) or (a is not None and _rank(a) is None):
                    return None
            return out
        if t in _NORMS:
            axis = n.attributes.get_int("axis", -1)
            params = [a for a in n.inputs[1:3] if a is not None]
            if rank and axis % rank == rank - 1 and all(
                    a.is_initializer() and _last(a) == self.c for a in params):
                return [x, *params]
            return None
        if t in _KEEP or t == "Transpose" or is_op(n, "Gather", "Slice"):
            if not self._carries(x) or rank is None:
                return None
            if t == "Transpose":
                perm = list(n.attributes.get_ints("perm", list(range(rank))[::-1]))
                return [x] if perm[-1] == rank - 1 else None
            if t == "Gather":
                keeps = n.attributes.get_int("axis", 0) % rank != rank - 1
                return [x] if keeps and not self._carries(n.inputs[1]) else None
            if t == "Slice":
                axes = _axes(n, 3)
                return [x] if axes is not None and rank - 1 not in [a % rank for a in axes] \
                    else None
            return [x]
        return None

    def _backward(self, v: ir.Value, queue: list) -> None:
        if v.is_initializer():
            return                                  # a param: recorded by its reader
        p = v.producer()
        if p is None:
            self.gather_in.setdefault(v, []).append(
                (None, f"graph input {v.name} cannot be permuted"))
            return
        if p in self.nodes or p in self.producers:
            return
        ins = self._stream_inputs(p)
        if ins is not None:
            self._member(p, ins, queue)
        elif is_op(p, "MatMul", "Gemm") and not isinstance(w := linear_weight(p), str) \
                and shared_reason(w[0], {p}) is None and self._bias_ok(p):
            self.producers.append(p)
        else:
            self.gather_in.setdefault(v, []).append(
                (None, f"producer {p.name} ({p.op_type}) cannot be permuted"))

    @staticmethod
    def _bias_ok(node: ir.Node) -> bool:
        b = node.inputs[2] if is_op(node, "Gemm") and len(node.inputs) > 2 else None
        return b is None or (b.is_initializer() and shared_reason(b, {node}) is None)

    def _member(self, n: ir.Node, ins: list, queue: list) -> None:
        self.nodes.append(n)
        for a in ins:
            if a.is_initializer():
                self.params.setdefault(a, set()).add(n)
            elif a not in self.values:
                self.values.add(a)
                queue.append(a)
        for o in n.outputs[:1]:
            if o not in self.values:
                self.values.add(o)
                queue.append(o)

    def _forward(self, v: ir.Value, queue: list) -> None:
        user_order = v in self.gather_in     # v stays as it is; members read v[..., p]
        if v.is_graph_output() and not user_order:
            self.gather_out.setdefault(v, []).append(
                (None, "graph output: the model returns it in its own channel order"))
        for u in data_users(v):
            if u in self.nodes or u in self.sinks:
                continue
            if is_op(u, "MatMul", "Gemm") and u.inputs[0] is v \
                    and not isinstance(w := linear_weight(u), str):
                if shared_reason(w[0], {u}) is None:
                    self.sinks.append(u)
                else:                           # a tied weight: settled in settle_params
                    self.tied.append((v, u, user_order))
            elif _reduces_last_only(u, _rank(v)) or (is_op(u, "CastLike")
                                                      and u.inputs[0] is not v):
                continue                                # order-free reads
            elif v in (ins := self._stream_inputs(u) or []):
                self._member(u, ins, queue)
            elif not user_order:
                self.gather_out.setdefault(v, []).append(
                    (u, f"reader {u.name} ({u.op_type}) cannot be permuted"))

    def settle_params(self) -> None:
        """Initializers read outside the family cannot be permuted in place: channel vectors
        (a bias or gamma deduplicated by the exporter) get a permuted copy, tables (a tied
        embedding) a gather. A consumer's weight tied to a table the family reads (an LM head
        tied to the embedding, stored [V, C]: its input channels are the table's columns)
        is permuted once, for both; any other shared consumer weight gets a gather."""
        for v, u, user_order in self.tied:
            w, layout = linear_weight(u)
            readers = self.params.get(w, set()) | {t for _, t, _ in self.tied
                                                   if linear_weight(t)[0] is w}
            if w in self.params and layout == "out_in" and shared_reason(w, readers) is None:
                self.params[w].add(u)
                self.sinks.append(u)
                self.tied_sinks.add(u)
            elif not user_order:
                why = shared_reason(w, {u})
                self.gather_out.setdefault(v, []).append((u, f"weight {why}"))
        for a, readers in list(self.params.items()):
            if why := shared_reason(a, readers):
                del self.params[a]
                if int(np.prod(a.shape)) == self.c:     # a channel vector
                    self.copies[a] = readers
                    continue
                for r in readers:
                    self.gather_in.setdefault(a, []).append((r, why))
