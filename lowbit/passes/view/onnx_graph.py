"""Small helpers over onnx_ir graphs, the ONNX twins of ``lowbit.passes.view.fx_graph``.

The same ideas as on FX, in ONNX vocabulary:

* **transparent ops** move or re-type data without computing on it (Reshape, Transpose,
  (Un)Squeeze, Expand, Cast, Identity, Dropout, Flatten), plus quantizers: a
  QuantizeLinear -> DequantizeLinear pair on an activation, the per-token float math the QDQ
  pass inserts (nodes tagged ``metadata_props[QSITE_KEY]``), and the NaN guard
  ``Where(IsNaN(p), 0, p)`` torch's exporter puts after softmax. A prepared graph therefore
  reads the same structure as the float graph.
* **data users** of a value read its values (Shape and Size read only its shape).
* graph order: ``number(graph)`` stores each node's position in ``node.meta[ORDER]``.
* **weights**: a linear's weight is an initializer (or Constant) reached through Transpose /
  Cast / Identity, or a DequantizeLinear of one (already quantized). ``weight_source`` says
  which, or why a weight-looking operand is refused (computed in the graph).

Names for what spotting finds: ``lowbit.passes.view.onnx_names``.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

__all__ = [
    "ORDER", "QSITE_KEY", "SHAPE_OPS", "WeightSource", "ancestors", "back", "bias_add",
    "const_array", "consumers", "data_input", "data_users", "descendants", "index_kind",
    "index_root", "is_const", "is_op", "is_parameter", "is_quantized", "is_scalar_scale",
    "is_split", "is_transparent", "linear_output", "number", "order", "param_of", "producer",
    "quant_source", "shape_of", "split_source", "weight_source",
]

ORDER = "lowbit.order"
QSITE_KEY = "lowbit.site"   # metadata on every node the QDQ pass inserts: the site it serves

SHAPE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Cast",
                       "CastLike", "Identity", "Dropout", "Flatten"})
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
_SHAPE_READERS = frozenset({"Shape", "Size"})
_STOP_WEIGHT_WALK = frozenset({"MatMul", "Gemm", "Gather", "Softmax", "Attention"})


# ---- nodes and values ----------------------------------------------------------------------
def is_op(node: object, *op_types: str) -> bool:
    return isinstance(node, ir.Node) and node.domain in ("", "ai.onnx") and node.op_type in op_types


def producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or Constant output (None for activations)."""
    if value is None:
        return None
    t = ir.convenience.get_const_tensor(value)
    return None if t is None else t.numpy()


def is_const(value: ir.Value | None) -> bool:
    if value is None:
        return False
    return value.const_value is not None or is_op(producer(value), "Constant")


def shape_of(value: ir.Value | None) -> tuple | None:
    """Dims as ints (static) or strings (symbolic), None when the shape is unknown."""
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in value.shape)


def number(graph: ir.Graph) -> None:
    for i, node in enumerate(graph):
        node.meta[ORDER] = i


def order(node: ir.Node) -> int:
    return node.meta.get(ORDER, -1)


def is_quantized(node: ir.Node) -> bool:
    """A node the QDQ pass inserted (tagged with the site it serves)."""
    return QSITE_KEY in node.metadata_props


def quant_source(node: ir.Node) -> ir.Value | None:
    """The one activation a tagged quantizer region reads (through its other tagged nodes)."""
    found, stack, seen = set(), [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for v in n.inputs:
            if v is None or is_const(v):
                continue
            p = v.producer()
            if p is not None and is_quantized(p):
                stack.append(p)
            else:
                found.add(v)
    return found.pop() if len(found) == 1 else None


def is_transparent(node: object) -> bool:
    if not isinstance(node, ir.Node):
        return False
    if is_op(node, *SHAPE_OPS):
        return True
    if is_op(node, *_QDQ):
        return not is_const(node.inputs[0])
    if is_op(node, "Where") and len(node.inputs) == 3:
        return is_op(producer(node.inputs[0]), "IsNaN") and \
            producer(node.inputs[0]).inputs[0] is node.inputs[2]
    return is_quantized(node) and quant_source(node) is not None


def data_input(node: ir.Node) -> ir.Value:
    """The input whose data a transparent, split or scale op passes on."""
    if is_op(node, "Where"):
        return node.inputs[2]
    if is_quantized(node) and not is_op(node, *_QDQ):
        return quant_source(node)
    if is_scalar_scale(node) and is_const(node.inputs[0]):
        return node.inputs[1]
    return node.inputs[0]


def is_scalar_scale(node: object) -> bool:
    """``x * c``, ``c * x`` or ``x / c`` with a one-element constant ``c``."""
    if not is_op(node, "Mul", "Div") or len(node.inputs) != 2:
        return False
    consts = [const_array(v) for v in node.inputs]
    scalar = [c is not None and c.size == 1 for c in consts]
    if is_op(node, "Div"):
        return scalar[1] and consts[0] is None
    return scalar[0] != scalar[1] and (consts[0] is None or consts[1] is None)


def is_split(node: object) -> bool:
    """Split, Slice, or Gather of an activation with a constant index (``select``)."""
    if is_op(node, "Split", "Slice"):
        return True
    return is_op(node, "Gather") and not is_const(node.inputs[0]) and is_const(node.inputs[1])


def split_source(node: ir.Node) -> ir.Value:
    return node.inputs[0]


def back(value: ir.Value | None, *, scales: bool = False) -> ir.Value | None:
    """Follow ``value`` back through transparent ops (and scalar scales) to its producer."""
    while True:
        p = producer(value)
        if not (is_transparent(p) or (scales and is_scalar_scale(p))):
            return value
        value = data_input(p)


def data_users(value: ir.Value) -> list[ir.Node]:
    out: dict[ir.Node, None] = {}
    for use in value.uses():
        if not is_op(use.node, *_SHAPE_READERS):
            out[use.node] = None
    return list(out)


def consumers(value: ir.Value) -> list[ir.Node]:
    """The first non-transparent data users of ``value``, in graph order."""
    found: dict[ir.Node, None] = {}
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in data_users(v):
            if is_transparent(u) and (is_quantized(u) or data_input(u) is v):
                stack.extend(u.outputs)
            else:
                found[u] = None
    return sorted(found, key=order)


def descendants(value: ir.Value) -> list[ir.Node]:
    seen: dict[ir.Node, None] = {}
    stack = [value]
    while stack:
        for u in data_users(stack.pop()):
            if u not in seen:
                seen[u] = None
                stack.extend(u.outputs)
    return sorted(seen, key=order)


def ancestors(value: ir.Value, floor: int, stop: Iterable[ir.Node]) -> tuple[list, list]:
    """Walk back from ``value`` over nodes after position ``floor``; returns (the ``stop``
    nodes reached, the nodes passed on the way), each in graph order."""
    stop = set(stop)
    hit, passed, stack, seen = set(), [], [producer(value)], set()
    while stack:
        n = stack.pop()
        if n is None or n in seen or order(n) <= floor or is_op(n, "Constant"):
            continue
        seen.add(n)
        if n in stop:
            hit.add(n)
            continue
        passed.append(n)
        stack.extend(producer(v) for v in n.inputs if v is not None and not is_const(v))
    return sorted(hit, key=order), sorted(passed, key=order)


# ---- weights -------------------------------------------------------------------------------
@dataclasses.dataclass
class WeightSource:
    """Where a linear's weight operand comes from. ``value`` is the initializer (the integer
    one when ``quantized``); ``reader`` / ``index`` the node input that reads it; ``transposed``
    is True when an odd number of Transposes lies between it and the linear."""

    value: ir.Value | None
    reader: ir.Node | None = None
    index: int = 0
    transposed: bool = False
    quantized: bool = False
    refused: str | None = None


def _is_param(value: ir.Value) -> bool:
    """A float initializer of rank >= 2: a weight, never a shape or a scalar."""
    return (value.const_value is not None and value.dtype is not None
            and value.dtype.is_floating_point() and len(value.const_value.shape) >= 2)


def weight_source(node: ir.Node, index: int) -> WeightSource | None:
    """The parameter behind input ``index`` of ``node``; None when it is an activation."""
    value, reader, transposed = node.inputs[index], node, False
    while True:
        if value is None:
            return None
        if is_const(value):
            ok = value.const_value is not None and _is_param(value)
            return WeightSource(value, reader, index, transposed) if ok else None
        p = value.producer()
        if p is None:
            return None  # a graph input
        if is_op(p, "Transpose", "Cast", "Identity"):
            transposed ^= is_op(p, "Transpose")
            value, reader, index = p.inputs[0], p, 0
        elif is_op(p, "DequantizeLinear") and is_const(p.inputs[0]):
            return WeightSource(p.inputs[0], p, 0, transposed, quantized=True)
        else:
            params = _params_behind(p)
            if params:
                why = (f"weight operand is computed by {p.op_type} {p.name!r} from initializer "
                       f"{params[0].name!r}, not read from an initializer; left in float")
                return WeightSource(None, refused=why)
            return None


def _params_behind(node: ir.Node, depth: int = 8) -> list[ir.Value]:
    """Rank-2 float initializers feeding ``node`` without crossing a compute-heavy op."""
    found, stack, seen = [], [(node, 0)], set()
    while stack:
        n, d = stack.pop()
        if n in seen or d > depth or is_op(n, *_STOP_WEIGHT_WALK):
            continue
        seen.add(n)
        for v in n.inputs:
            if v is None:
                continue
            if v.const_value is not None and _is_param(v):
                found.append(v)
            elif v.producer() is not None:
                stack.append((v.producer(), d + 1))
    return found


def bias_add(node: ir.Node, width: int) -> tuple[ir.Value, ir.Node] | None:
    """(bias initializer, Add) when ``node``'s only reader adds a 1-D constant of ``width``."""
    users = data_users(node.outputs[0])
    if len(users) != 1 or not is_op(users[0], "Add") or len(users[0].inputs) != 2:
        return None
    add = users[0]
    b = param_of(add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0])
    arr = const_array(b)
    return (b, add) if arr is not None and arr.ndim == 1 and arr.shape[0] == width else None


def linear_output(ref) -> ir.Value:
    """A LinearRef's output value: after its bias Add (MatMul + Add), else the op's own."""
    if is_op(ref.node, "MatMul") and (found := bias_add(ref.node, ref.out_features)):
        return found[1].outputs[0]
    return ref.node.outputs[0]


def param_of(value: ir.Value | None) -> ir.Value | None:
    """The initializer ``value`` is (through Cast / Identity), else None."""
    while value is not None and not value.is_initializer():
        p = value.producer()
        if not is_op(p, "Cast", "Identity"):
            return None
        value = p.inputs[0]
    return value


# ---- what spotting reads off initializers and indices ----------------------------------
def is_parameter(value: ir.Value) -> bool:
    """A float initializer that is a model parameter (2-D or up, or marked so by torch)."""
    kind = value.metadata_props.get("pkg.torch.export.graph_signature.InputSpec.kind")
    t = value.const_value
    return (t is not None and value.dtype is not None and value.dtype.is_floating_point()
            and (len(t.shape) >= 2 or kind == "PARAMETER"))


def index_root(idx: ir.Value) -> ir.Value:
    """Back from an embedding index through moves, slices and ``+ c`` offsets."""
    while (p := producer(idx)) is not None and (
            is_transparent(p) or is_split(p) or is_op(p, "Slice") or (
            is_op(p, "Add", "Sub") and const_array(p.inputs[1]) is not None)):
        idx = p.inputs[0]
    return idx


def index_kind(idx: ir.Value) -> str:
    """What indexes an embedding: "input", "embedding.position" or "embedding.token_type"."""
    root = index_root(idx)
    if root.is_graph_input():
        return "input"
    node = root
    while is_op(p := producer(node), "Add", "Sub", "Mul", "Cast") or is_transparent(p):
        node = p.inputs[0]
    if is_op(producer(root), "Range") or is_op(producer(node), "CumSum"):
        return "embedding.position"
    arr = const_array(root)
    if arr is not None and arr.size > 1 and bool((arr != arr.flatten()[0]).any()):
        return "embedding.position"
    return "embedding.token_type"
