"""Shrink the head (or neuron) axis between the linears that make it and the one that reads it.

The ONNX twin of ``passes/fx/shrink_axis.py``. Every tensor on a path from q / k / v (up /
gate) to o (down) carries exactly one axis made of the pruned units; keeping ``k`` of ``n``
multiplies it by ``r = k / n`` in every one of them. The axis is followed op by op with its
*unit stride*: a unit (a head) starts every ``s = inner * prod(shape[a+1:])`` elements, with
``inner`` the part of axis ``a`` below one unit (``head_dim`` on the projections' ``H*d``
axis). A Reshape moves it to the output axis ``b`` with ``prod(out[b+1:]) <= s <
prod(out[b:])``, so ``[B,S,H*d] -> [B,S,H,d]``, GQA's ``[B,KV,rep,S,d] -> [B,H,S,d]`` and the
exporter's ``[B,H,S,d] -> [B*H,S,d]`` and back all follow. Shapes are static *probe* shapes
(``ProbeShapes``: the exporter's annotations with each symbolic input size given a distinct
prime, holes filled by ONNX shape inference with data propagation on those sizes).

What fixes the axis is rewritten ``s -> s * r``: the entry at the axis of a Reshape / Expand
target, when it is a constant (an initializer, a Constant, or a constant piece of a Concat),
in a new constant for that reader (a shape tensor the exporter shares between layers stays
for the others); ``-1`` / ``0`` entries and pieces computed from the Shape of a tensor on the
path follow by themselves. Shape annotations on the path are scaled alike.

Refused with a ConfigError naming the node: an op not followed here, a reduction, softmax,
slice, split, gather, concat or matrix axis along the pruned axis, a tensor from outside the
path that carries the axis (a mask ``[B,H,S,S]``; broadcast size-1 axes are fine; one of
unknown shape is let through: H entries on the axis fail to broadcast at run time, never give
other numbers), a graph output on the path, a shape entry taken from outside the path.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx_ir as ir

from lowbit.errors import ConfigError
from lowbit.passes.onnx.edit import add_initializer
from lowbit.passes.view.onnx_graph import const_array, data_users, is_op, order, producer

__all__ = ["ProbeShapes", "region", "shrink_axis", "unique_name"]

_PRIMES = (3, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)
_POINTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Erf",
    "Tanh", "Sigmoid", "Relu", "Gelu", "Where", "IsNaN", "IsInf", "Cast", "CastLike", "Identity",
    "Dropout", "Max", "Min", "Clip", "Softplus", "LeakyRelu", "Elu", "HardSigmoid", "HardSwish",
    "Mish", "Not", "And", "Or", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "Sin", "Cos", "Floor", "Ceil", "Round", "Sign"})
_AXIS_OPS = {"Softmax": -1, "LogSoftmax": -1, "Hardmax": -1, "Concat": None, "Split": 0}


class ProbeShapes:
    """Static shapes of a model's values at probe input sizes (module docstring)."""

    def __init__(self, model: ir.Model):
        self.model, self._inferred = model, None
        self.sizes: dict[str, int] = {}
        for v in model.graph.inputs:
            for d in v.shape or ():
                if not isinstance(d, int) and str(d) not in self.sizes:
                    self.sizes[str(d)] = _PRIMES[len(self.sizes) % len(_PRIMES)]

    def _annotated(self, v: ir.Value) -> tuple | None:
        if v.shape is None:
            return None
        dims = tuple(d if isinstance(d, int) else self.sizes.get(str(d)) for d in v.shape)
        return dims if None not in dims else None

    def _infer(self) -> dict:
        import onnx
        from onnx import helper, shape_inference

        proto = ir.to_proto(self.model)
        g, small = proto.graph, []
        for t in g.initializer:      # weights become inputs: shapes only, nothing copied twice
            if math.prod(t.dims) > 64:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            else:
                small.append(t)
        del g.initializer[:]
        g.initializer.extend(small)
        for i in g.input:
            for d in i.type.tensor_type.shape.dim:
                if d.dim_param:
                    size = self.sizes.get(d.dim_param)
                    d.Clear()
                    if size is not None:
                        d.dim_value = size
        del g.value_info[:]
        try:
            out = shape_inference.infer_shapes(proto, data_prop=True)
        except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
            return {}
        found = {}
        for vi in out.graph.value_info:
            dims = tuple(d.dim_value if d.HasField("dim_value") else None
                         for d in vi.type.tensor_type.shape.dim)
            if vi.type.tensor_type.HasField("shape") and None not in dims:
                found[vi.name] = dims
        return found

    def __call__(self, v: ir.Value | None) -> tuple | None:
        if v is None:
            return None
        arr = const_array(v)
        if arr is not None:
            return tuple(arr.shape)
        if (dims := self._annotated(v)) is not None:
            return dims
        if self._inferred is None:
            self._inferred = self._infer()
        return self._inferred.get(v.name)

    def rank(self, v: ir.Value) -> int | None:
        s = self(v)
        if s is not None:
            return len(s)
        return len(v.shape) if v.shape is not None else None


def unique_name(graph: ir.Graph, name: str, *, nodes: bool = False) -> str:
    """``name``, or ``name_1``, ``name_2`` ... when a value (``nodes``: a node) has it."""
    taken = {n.name for n in graph} if nodes else set(graph.initializers) | {
        v.name for v in graph.inputs} | {v.name for n in graph for v in n.outputs}
    unique, i = name, 0
    while unique in taken:
        i += 1
        unique = f"{name}_{i}"
    return unique


def region(sources: list[ir.Node], sink: ir.Node, what: str) -> list[ir.Node]:
    """The nodes on a path from ``sources`` to ``sink`` (sources included, sink not), graph
    order; ConfigError when one of them leaves the graph before ``sink``."""
    seen, stack = set(sources), list(sources)
    while stack:
        n = stack.pop()
        for out in n.outputs:
            if out.is_graph_output():
                raise ConfigError(f"pruning {what}: the graph returns {out.name!r}, a tensor of "
                                  f"the pruned axis (a KV cache output?); cannot prune there")
            for u in data_users(out):
                if u is not sink and u not in seen:
                    seen.add(u)
                    stack.append(u)
    for n in seen:
        if n not in sources and not any(data_users(o) for o in n.outputs):
            raise ConfigError(f"pruning {what}: {n.op_type} {n.name!r} reads the pruned axis "
                              f"and leaves the graph before {sink.name!r}; cannot prune there")
    return sorted(seen, key=order)


def _ints(node: ir.Node, attr: str, index: int) -> list[int] | None:
    if len(node.inputs) > index and node.inputs[index] is not None:
        arr = const_array(node.inputs[index])
        return None if arr is None else [int(x) for x in np.atleast_1d(arr)]
    a = node.attributes.get(attr)
    return list(a.as_ints()) if a is not None else None


class _Shrink:
    def __init__(self, graph, shapes: ProbeShapes, ratio: Fraction, what: str, nodes, allowed):
        self.graph, self.shapes, self.ratio, self.what = graph, shapes, ratio, what
        self.nodes, self.allowed = set(nodes), allowed
        self.ax: dict[ir.Value, tuple[int, int]] = {}
        self.cache: dict = {}

    def fail(self, node: ir.Node, why: str = "") -> ConfigError:
        return ConfigError(f"pruning {self.what}: cannot follow the pruned axis through "
                           f"{node.op_type} {node.name!r}{': ' + why if why else ''} "
                           f"(lowbit/passes/onnx/shrink_axis.py lists the ops it follows)")

    def scaled(self, size: int, node: ir.Node) -> int:
        new = size * self.ratio
        if new.denominator != 1:
            raise ConfigError(f"pruning {self.what}: size {size} in {node.name!r} does not "
                              f"shrink by {self.ratio}")
        return int(new)

    def from_path(self, v: ir.Value) -> bool:
        """``v`` is computed from the Shape of a tensor on the path (it follows by itself)."""
        stack, seen = [v], set()
        while stack:
            p = producer(stack.pop())
            if p is None or p in seen:
                continue
            seen.add(p)
            if is_op(p, "Shape") and (p.inputs[0] in self.ax or producer(p.inputs[0]) in self.nodes):
                return True
            stack.extend(x for x in p.inputs if x is not None)
        return False

    def new_const(self, arr: np.ndarray, pos: int, node: ir.Node, like: ir.Value) -> ir.Value:
        arr = np.array(arr, copy=True).reshape(-1)
        arr[pos] = self.scaled(int(arr[pos]), node)
        return add_initializer(self.graph, f"{like.name or 'shape'}_pruned", arr.astype(np.int64),
                               ir.DataType.INT64)

    def rescale_entry(self, node: ir.Node, index: int, pos: int) -> None:
        """Entry ``pos`` of the shape tensor ``node.inputs[index]`` times the ratio."""
        v = node.inputs[index]
        key = (v, pos)
        if key in self.cache:
            node.replace_input_with(index, self.cache[key])
            return
        arr = const_array(v)
        if arr is not None:
            if int(arr.reshape(-1)[pos]) in (-1, 0):
                return
            new = self.new_const(arr, pos, node, v)
        elif is_op(p := producer(v), "Concat"):
            at = 0
            for i, piece in enumerate(p.inputs):
                parr, s = const_array(piece), self.shapes(piece)
                n = parr.size if parr is not None else (s[0] if s and len(s) == 1 else None)
                if n is None:
                    raise self.fail(node, f"the length of shape piece {piece.name!r} is unknown")
                if at <= pos < at + n:
                    break
                at += n
            else:
                raise self.fail(node, f"its target shape {v.name!r} has no entry {pos}")
            if parr is None:
                if self.from_path(piece):
                    return
                raise self.fail(node, f"its size on the pruned axis comes from {piece.name!r}, "
                                      f"computed off the path")
            if int(parr.reshape(-1)[pos - at]) in (-1, 0):
                return
            ins = list(p.inputs)
            ins[i] = self.new_const(parr, pos - at, node, piece)
            cat = ir.node("Concat", ins, attributes={"axis": 0}, name=unique_name(self.graph, f"{p.name}_pruned", nodes=True))
            cat.outputs[0].name = unique_name(self.graph, f"{v.name}_pruned")
            cat.outputs[0].type, cat.outputs[0].shape = v.type, v.shape
            self.graph.insert_before(node, cat)
            new = cat.outputs[0]
        elif self.from_path(v):
            return
        else:
            raise self.fail(node, f"its target shape {v.name!r} is computed off the path")
        self.cache[key] = new
        node.replace_input_with(index, new)

    def check_outside(self, node: ir.Node, out_axis: int, rout: int) -> None:
        for v in node.inputs:
            if v is None or v in self.ax or v in self.allowed:
                continue
            r = self.shapes.rank(v)
            if r is None:     # unknown (a mask of computed shape): one of H entries on the axis
                continue      # fails to broadcast at run time, it cannot compute wrong numbers
            pos = out_axis - (rout - r)
            if pos >= 0:
                s = self.shapes(v)
                if s is None or s[pos] != 1:
                    raise self.fail(node, f"its input {v.name!r} from outside the path has the "
                                          f"pruned axis")

    def axis(self, n: ir.Node) -> tuple[int, int]:
        """(axis, inner) of ``n``'s outputs from its inputs on the path (module docstring)."""
        src = next(v for v in n.inputs if v in self.ax)
        a, inner = self.ax[src]
        rin, rout = self.shapes.rank(src), self.shapes.rank(n.outputs[0])
        if rin is None or rout is None:
            raise self.fail(n, "rank unknown")
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        if op == "Transpose":
            perm = _ints(n, "perm", 99) or list(range(rin))[::-1]
            return perm.index(a), inner
        if op == "Unsqueeze":
            axes = sorted(d % rout for d in _ints(n, "axes", 1))
            rest = [i for i in range(rout) if i not in axes]
            return rest[a], inner
        if op == "Squeeze":
            axes = [d % rin for d in (_ints(n, "axes", 1) or [])]
            if a in axes or not axes:
                raise self.fail(n)
            return a - sum(d < a for d in axes), inner
        if op == "Reshape":
            sin, sout = self.shapes(src), self.shapes(n.outputs[0])
            if sin is None or sout is None:
                raise self.fail(n, "its shapes are unknown")
            stride = inner * math.prod(sin[a + 1:])
            for b in range(len(sout)):
                below = math.prod(sout[b + 1:])
                if below <= stride < below * sout[b] and stride % below == 0:
                    self.rescale_entry(n, 1, b)
                    return b, stride // below
            raise self.fail(n)
        if op == "Expand":
            out = a + rout - rin
            target = const_array(n.inputs[1])
            if target is None or int(target.reshape(-1)[out]) != 1:
                self.rescale_entry(n, 1, out)
            return out, inner
        if op == "MatMul":
            for v in n.inputs:
                if v in self.ax and self.ax[v][0] - self.shapes.rank(v) >= -2:
                    raise self.fail(n, "the pruned axis is a matrix axis")
            out = rout - (rin - a)
            self.check_outside(n, out, rout)
            return out, inner
        if op in _AXIS_OPS:
            d = n.attributes.get_int("axis", _AXIS_OPS[op] if _AXIS_OPS[op] is not None else 0)
            if d % rin == a:
                raise self.fail(n, "along the pruned axis")
            if op != "Concat":
                return a, inner
            self.check_outside(n, a, rout)
            return a, inner
        if op == "Slice":
            starts = const_array(n.inputs[1])
            axes = _ints(n, "axes", 3) or list(range(len(np.atleast_1d(starts))))
            if a in [d % rin for d in axes]:
                raise self.fail(n, "along the pruned axis")
            return a, inner
        if op == "Gather":
            d = n.attributes.get_int("axis", 0) % rin
            if d == a or n.inputs[0] not in self.ax:
                raise self.fail(n, "along the pruned axis")
            return (a if a < d else a + rout - rin), inner
        if op.startswith("Reduce"):
            axes = [d % rin for d in (_ints(n, "axes", 1) or [])]
            if not axes or a in axes:
                raise self.fail(n, "along the pruned axis")
            keep = n.attributes.get_int("keepdims", 1)
            return (a if keep else a - sum(d < a for d in axes)), inner
        if op in _POINTWISE:
            out = rout - (rin - a)
            for v in n.inputs:
                if v in self.ax and self.ax[v][0] - self.shapes.rank(v) != out - rout:
                    raise self.fail(n, "its inputs carry the pruned axis at different places")
            self.check_outside(n, out, rout)
            return out, inner
        raise self.fail(n)


def shrink_axis(graph: ir.Graph, nodes: list[ir.Node], sources: dict[ir.Node, int],
                ratio: Fraction, shapes: ProbeShapes, what: str, allowed=()) -> int:
    """Follow the pruned axis through ``nodes`` (``region``; ``sources``: the linears with the
    ``inner`` size of their last axis), rewrite what fixes it by ``ratio`` and scale the shape
    annotations on the way; ``allowed``: outside values that carry the axis and are sliced by
    the caller (the linears' biases). Returns how many shape entries were rewritten."""
    sh = _Shrink(graph, shapes, ratio, what, nodes, set(allowed))
    for n in nodes:
        if n in sources:
            r = shapes.rank(n.outputs[0])
            if r is None:
                raise sh.fail(n, "rank unknown")
            sh.ax[n.outputs[0]] = (r - 1, sources[n])
            continue
        a = sh.axis(n)
        for o in n.outputs:
            sh.ax[o] = a
    for v, (a, _) in sh.ax.items():        # annotations: the axis shrinks where it is static
        if v.shape is not None and a < len(v.shape) and isinstance(v.shape[a], int):
            dims = list(v.shape.dims)
            dims[a] = sh.scaled(int(dims[a]), v.producer())
            v.shape = ir.Shape(dims)
    return len(sh.cache)
