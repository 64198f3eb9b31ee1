"""Channel families for PEG's permutation, written once over a ``GraphView`` (the FX and ONNX
``PegPermute`` passes both discover them here; ``lowbit.passes.peg_permute`` folds them).

A family is grown from a seed value over the values ``x`` whose last axis holds the same C
channels; ``x' = x[..., p]`` is exact across every rule below (indexing moves values)::

    members     ops that act on the last axis channel by channel (``GraphView.channel_inputs``:
                elementwise maps, binary ops whose other operand broadcasts on that axis or is
                itself a member, norms over it, casts, moves and picks that keep it,
                quantizers, an embedding lookup: its table is a parameter)
    parameters  read by a member with C channels last: biases, gains, embedding tables
                (``E' = E[:, p]``), decomposed RMSNorm's ``w`` behind its cast
    producers   linears whose weight (and the bias the op adds) nobody else reads: rows
    sinks       linears reading a member as their activation: columns
    order-free  readers that do not depend on the order (``GraphView.order_free``: reductions
                over the last axis, dtype-only reads)
    gathers     everything else: graph inputs and outputs, other producers and readers
                (``gather_in`` / ``gather_out``: value -> [(reader | None, reason)])

Parameters are settled once the family is known (``settle``): one read outside the family
cannot be permuted in place; a channel vector (a bias or gamma an exporter deduplicated) is
then listed in ``copies`` when the caller asks for permuted copies (ONNX: gathers would hide
the bias Adds from spotting), else it gets a gather, as a table does. A sink whose weight is
tied to a table the family reads (an LM head tied to the embedding, stored [V, C] = [out, in]:
its input channels are the table's columns) is permuted once, with the table, when every
reader of that tensor is in the family; otherwise it reads its input through a gather.
"""

from __future__ import annotations

import math
from typing import Any

from lowbit.passes.peg_permute import FoldPlan
from lowbit.passes.view.base import GraphView

__all__ = ["GRAPH_OUTPUT", "Family", "discover", "fold_plan"]

GRAPH_OUTPUT = "graph output: the model returns it in its own channel order"


def _last(view: GraphView, value: Any) -> Any:
    shape = view.shape(value)
    return shape[-1] if shape else None


def _shared(view: GraphView, name: str, owners: set) -> str | None:
    """Why parameter ``name`` may not be permuted for ``owners`` alone (its readers through
    casts and quantizers, under every name it has)."""
    if view.param_pinned(name):
        return f"{name} is a graph input or output"
    others = sorted({view.name(u) for u in view.param_readers(name) if u not in owners})
    return f"{name} is shared: also read by {', '.join(others)}" if others else None


class Family:
    """One channel family (module docstring) grown from ``seed``; call ``settle`` once."""

    def __init__(self, view: GraphView, seed: Any):
        self.view, self.c = view, _last(view, seed)
        self.values: set = set()
        self.nodes: list = []                   # members, in discovery order
        self.node_set: set = set()
        self.params: dict[str, list] = {}       # name -> [(value, member reader)]
        self.copies: dict[str, list] = {}       # shared channel vector -> [(value, reader)]
        self.producers: list = []
        self.sinks: list = []
        self.tied_sinks: set = set()            # sinks whose weight is a family table
        self.gather_in: dict = {}               # value -> [(reader | None, reason)]
        self.gather_out: dict = {}              # value -> [(reader | None, reason)]
        self._tied: list = []                   # (value, consumer, reads original order)
        self._todo: list = []
        self._reach(seed, None)
        self._add_value(seed)
        while self._todo:
            kind, item, ins = self._todo.pop()
            if kind == "node":
                for a in ins:
                    self._reach(a, item)
            else:
                self._forward(item)

    def _add_value(self, value: Any) -> None:
        if value not in self.values:
            self.values.add(value)
            self._todo.append(("value", value, None))

    def _member(self, node: Any, ins: list) -> None:
        self.nodes.append(node)
        self.node_set.add(node)
        self._todo.append(("node", node, ins))
        self._add_value(self.view.out(node))

    def _reach(self, value: Any, reader: Any) -> None:
        """``value`` carries the family's channels into ``reader`` (None: the seed)."""
        view = self.view
        if value in self.values:
            return
        p = view.producer(value)
        name = view.param_of(value)
        if name is not None and (p is None or not view.inputs(p)):     # the parameter itself
            self.params.setdefault(name, []).append((value, reader))
            return
        if p is None or view.is_graph_input(value):
            why = f"graph input {view.value_name(value)} cannot be permuted"
        elif p in self.node_set or p in self.producers:
            return
        elif (ins := view.channel_inputs(p, self.c)) is not None:
            return self._member(p, ins)
        elif self._producer_ok(p):
            self.producers.append(p)
            return self._add_value(value)
        else:
            why = f"producer {view.describe(p)} cannot be permuted"
        self.gather_in.setdefault(value, []).append((reader, why))

    def _producer_ok(self, node: Any) -> bool:
        ops = self.view.linear_operands(node)
        if isinstance(ops, str):
            return False
        names = [ops[1]] + [self.view.param_of(b) for b in self.view.linear_bias(node)]
        return all(n is not None and _shared(self.view, n, {node}) is None for n in names)

    def _forward(self, value: Any) -> None:
        view = self.view
        user_order = value in self.gather_in     # the seed itself stays; members read a gather
        if view.is_graph_output(value) and not user_order:
            self.gather_out.setdefault(value, []).append((None, GRAPH_OUTPUT))
        for u in view.users(value):
            if u in self.node_set or u in self.sinks:
                continue
            ops = view.linear_operands(u)
            if not isinstance(ops, str) and ops[0] is value:
                if _shared(view, ops[1], {u}) is None:
                    self.sinks.append(u)
                else:                           # tied: settled in ``settle``
                    self._tied.append((value, u, user_order))
            elif view.order_free(value, u):
                continue
            elif value in (ins := view.channel_inputs(u, self.c) or []):
                self._member(u, ins)
            elif not user_order:
                self.gather_out.setdefault(value, []).append(
                    (u, f"reader {view.describe(u)} cannot be permuted"))

    def settle(self, copy_vectors: bool) -> None:
        """Decide the tied sinks and the parameters read outside the family (module
        docstring); ``copy_vectors``: a shared channel vector goes to ``copies``."""
        view = self.view
        for value, u, user_order in self._tied:
            _, w, layout = view.linear_operands(u)
            names = {w, *view.aliases(w)}
            table = next((n for n in self.params if n in names), None)
            heads = {t for _, t, _ in self._tied if view.linear_operands(t)[1:] in
                     {(n, "out_in") for n in names}}
            why = _shared(view, w, {u}) if table is None or layout != "out_in" else \
                _shared(view, table, self.node_set | heads)
            if why is None:
                self.sinks.append(u)
                self.tied_sinks.add(u)
            elif not user_order:
                self.gather_out.setdefault(value, []).append(
                    (u, f"reader {view.describe(u)} cannot be permuted: its weight {why}"))
        for name, reads in list(self.params.items()):
            if (why := _shared(view, name, self.node_set | self.tied_sinks)) is None:
                continue
            del self.params[name]
            shape = view.shape(reads[0][0])
            if copy_vectors and shape is not None and math.prod(shape) == self.c:
                self.copies[name] = reads
                continue
            for value, reader in reads:
                self.gather_in.setdefault(value, []).append((reader, why))

    def quantizers(self) -> list:
        """The family's activation quantizers (FX fake-quant members), in graph order."""
        return sorted((n for n in self.nodes if self.view.is_fake_quant(n)), key=self.view.order)


def fold_plan(fam: Family) -> FoldPlan:
    """The family's parameters by name (``lowbit.passes.peg_permute.fold``): producers' rows
    and biases, the members' parameters, the sinks' columns (a tied sink's weight is the
    family's table: permuted once, as a vector)."""
    view, rows, vectors = fam.view, [], []
    for n in fam.producers:
        _, w, layout = view.linear_operands(n)
        rows.append((w, layout))
        vectors += [view.param_of(b) for b in view.linear_bias(n)]
    vectors += list(fam.params)
    columns = [view.linear_operands(n)[1:] for n in fam.sinks if n not in fam.tied_sinks]
    return FoldPlan(tuple(rows), tuple(vectors), tuple(columns))


def discover(view: GraphView, seed: Any, *, copy_vectors: bool) -> Family:
    """The settled family of ``seed`` (module docstring)."""
    fam = Family(view, seed)
    fam.settle(copy_vectors)
    return fam
