"""PegPermute (ONNX): fold PEG's range-based channel permutation into the initializers.

The ONNX twin of ``lowbit.passes.fx.peg_permute``, run on the float model between calibration
and ``InsertQDQ`` (``quantize_onnx`` does). For each PEG site with ``permute=True`` take the
*channel family* of its tensor: every value connected to it through ops that treat the last
axis (C channels) channel by channel. One order ``p`` (``lowbit.quant.peg.shared_order`` over
the family's PEG ranges) becomes the family's channel order, ``x' = x[..., p]``, exactly::

    producers   MatMul / Gemm weight: output channels permuted (+ Gemm bias)
                initializer read by a member: an embedding table read by Gather (axis 0),
                a bias / gamma read by Add / Mul / ..., a norm's gamma, beta:  v' = v[..., p]
    members     LayerNormalization / RMSNormalization (last axis);   elementwise ops
                (Gelu, Erf, Tanh, Relu, Sigmoid, Cast, ...);  Reshape / (Un)Squeeze / Expand /
                Transpose keeping the last axis;  Gather / Slice off the last axis (a pooler)
    readers     ReduceMean / ReduceSum / ... over the last axis alone (decomposed norms):
                order-invariant, nothing to do
    consumers   MatMul / Gemm (the activation operand) weight: input channels permuted
    elsewhere   an explicit Gather(x, index, axis=-1), counted with its reason

so the function is unchanged (up to the order of float sums) and each PEG site's groups are
contiguous runs of channels, as ``linear_u8s8_peg`` wants them. The calibrated per-channel
ranges of the family's PEG sites are permuted alike; ``peg_orders`` gives the grouping order
``lowbit.quant.peg.spec_qparams`` then uses (identity for permuted sites, ``argsort(p)`` for
PEG sites of the family that group in place).

Gathers left, with the reason in ``PegReport.gathers``: a graph output (the model returns
the stream in the user's order: the output keeps its name), a graph input, a reader or
producer that is not a linear or a channel-wise op, an initializer that is shared or read
elsewhere (a tied LM head; a shared bias or gamma, as exporters deduplicate equal ones, gets
a permuted copy instead), values of unknown shape. Skips: PEG sites without ``permute`` and
sites done by an earlier run (``metadata_props["lowbit.peg_permuted"]``): a second run
reports ``modified=False``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import torch

from lowbit.backends.onnxruntime import add_initializer
from lowbit.config import PerEmbeddingGroup
from lowbit.passes.fx.peg_permute import PegReport
from lowbit.passes.infra import Pass
from lowbit.passes.onnx.fold_channel_scales import linear_weight, shared_reason
from lowbit.passes.onnx.graph_utils import const_array, data_users, is_op, shape_of
from lowbit.quant import peg

__all__ = ["DONE_KEY", "PegPermute", "peg_orders"]

DONE_KEY = "lowbit.peg_permuted"
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


class _Family:
    """Discovery of one channel family (module docstring) from a seed value."""

    def __init__(self, seed: ir.Value):
        self.c = _last(seed)
        self.values: set = {seed}
        self.nodes: list[ir.Node] = []          # channel-wise members (norms included)
        self.params: dict = {}                  # initializer -> {member readers}
        self.copies: dict = {}                  # shared small initializer -> {member readers}
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
        if t in _UNARY:
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
                    and not isinstance(w := linear_weight(u), str) \
                    and shared_reason(w[0], {u}) is None:
                self.sinks.append(u)
            elif _reduces_last_only(u, _rank(v)):
                continue
            elif v in (ins := self._stream_inputs(u) or []):
                self._member(u, ins, queue)
            elif not user_order:
                self.gather_out.setdefault(v, []).append(
                    (u, f"reader {u.name} ({u.op_type}) cannot be permuted"))

    def settle_params(self) -> None:
        """Initializers read outside the family cannot be permuted in place: channel vectors
        (a bias or gamma deduplicated by the exporter) get a permuted copy, tables (a tied
        embedding) a gather."""
        for a, readers in list(self.params.items()):
            if why := shared_reason(a, readers):
                del self.params[a]
                if int(np.prod(a.shape)) == self.c:     # a channel vector
                    self.copies[a] = readers
                    continue
                for r in readers:
                    self.gather_in.setdefault(a, []).append((r, why))


def _set(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.Tensor(np.ascontiguousarray(array), name=value.name)


@dataclasses.dataclass(frozen=True)
class PegPermute(Pass):
    """Fold PEG permutations (module docstring) for ``sites`` (``Plan.static()``) whose
    per-channel calibrated ``ranges`` (``{site name: (lo, hi)}``, changed in place for the
    family's PEG sites) come from ``observe``; returns a ``PegReport``."""

    sites: tuple
    ranges: dict

    def _seeds(self, model: ir.Model) -> list:
        done = set(json.loads(model.metadata_props.get(DONE_KEY, "[]")))
        return [s for s in self.sites if isinstance(s.spec.granularity, PerEmbeddingGroup)
                and s.spec.granularity.permute and s.name not in done]

    def call(self, model: ir.Model) -> PegReport:
        report, covered = PegReport(model, False), set()
        seeds = self._seeds(model)
        for seed in seeds:
            if seed.name in covered:
                continue
            fam = _Family(seed.value)
            fam.settle_params()
            pegs = [s for s in self.sites if isinstance(s.spec.granularity, PerEmbeddingGroup)
                    and s.value in fam.values]
            covered |= {s.name for s in pegs}
            report.families.append(self._apply(model.graph, fam, pegs))
            report.modified = True
        if report.modified:
            done = json.loads(model.metadata_props.get(DONE_KEY, "[]"))
            model.metadata_props[DONE_KEY] = json.dumps(sorted({*done, *covered}))
        return report

    def _apply(self, graph: ir.Graph, fam: _Family, pegs: list) -> dict:
        p = peg.shared_order([self.ranges[s.name] for s in pegs if s.spec.granularity.permute])
        inv, touched = peg.inverse(p), 0

        def put(v: ir.Value, fn) -> None:
            nonlocal touched
            _set(v, fn(const_array(v)))
            touched += 1

        for n in fam.producers:
            w, layout = linear_weight(n)
            put(w, lambda a, lay=layout: peg.permute_out(a, p, lay))
            if is_op(n, "Gemm") and len(n.inputs) > 2 and n.inputs[2] is not None:
                put(n.inputs[2], lambda a: peg.permute_vector(a, p))
        for a in fam.params:
            put(a, lambda arr: peg.permute_vector(arr, p))
        for n in fam.sinks:
            w, layout = linear_weight(n)
            put(w, lambda a, lay=layout: peg.permute_in(a, p, lay))
        for a, readers in fam.copies.items():
            arr = peg.permute_vector(const_array(a), p)
            copy = add_initializer(graph, f"{a.name}_peg", arr, a.dtype)
            for r in readers:
                _rewire(r, a, copy)
            touched += 1
        for s in pegs:
            lo, hi = self.ranges[s.name]
            self.ranges[s.name] = (lo[p], hi[p])
        gathers = []
        for v, readers in fam.gather_in.items():
            g = _gather(graph, v, p, f"lowbit_peg_in_{v.name}")
            for r, _ in readers:
                for u in [r] if r is not None else [u for u in data_users(v)
                                                    if u in fam.nodes or u in fam.sinks]:
                    _rewire(u, v, g)
            for s in self.sites:
                if s.value is v:
                    s.value = g
            gathers += [(f"{v.name} -> {r.name if r else 'family'}", why) for r, why in readers]
        for v, readers in fam.gather_out.items():
            g = _gather(graph, v, inv, f"lowbit_peg_out_{v.name}")
            for r, why in readers:
                gathers.append((f"{v.name} -> {r.name if r else 'graph output'}", why))
                if r is None:
                    name = v.name
                    v.name, idx = f"{name}_lowbit_peg", list(graph.outputs).index(v)
                    g.name, graph.outputs[idx] = name, g
                else:
                    _rewire(r, v, g)
        return {"sites": [s.name for s in pegs], "channels": fam.c, "order": p,
                "params": touched, "members": len(fam.nodes), "gathers": gathers}


def _gather(graph: ir.Graph, v: ir.Value, index: torch.Tensor, name: str) -> ir.Value:
    """``Gather(v, index, axis=-1)`` inserted after ``v``'s producer (or first)."""
    idx = add_initializer(graph, name, index.numpy().astype(np.int64), ir.DataType.INT64)
    node = ir.Node("", "Gather", [v, idx], attributes=[ir.AttrInt64("axis", -1)], name=name)
    out = node.outputs[0]
    out.name, out.type = f"{name}_out", v.type
    out.shape = ir.Shape(v.shape) if v.shape is not None else None
    p = v.producer()
    if p is not None:
        graph.insert_after(p, node)
    else:
        graph.insert_before(next(iter(graph)), node)
    return out


def _rewire(node: ir.Node, old: ir.Value, new: ir.Value) -> None:
    for i, x in enumerate(node.inputs):
        if x is old:
            node.replace_input_with(i, new)


def peg_orders(report: PegReport, sites) -> dict[str, torch.Tensor]:
    """The grouping order ``spec_qparams`` takes per PEG site of a folded family: identity
    for permuted sites (contiguous groups), ``argsort(p)`` for in-place ones."""
    by_name = {s.name: s for s in sites}
    out = {}
    for fam in report.families:
        for name in fam["sites"]:
            permute = by_name[name].spec.granularity.permute
            out[name] = torch.arange(fam["channels"]) if permute else peg.inverse(fam["order"])
    return out
