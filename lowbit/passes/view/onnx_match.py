"""Op patterns ONNX transformer spotting is built from; each matches one neighbourhood.

    LayerNorm (decomposed, TorchScript below opset 17):
        d = x - ReduceMean(x);  y = d / Sqrt(ReduceMean(d^2) + eps) [* w] [+ b]
    RMSNorm (decomposed, HF Llama / Gemma under both exporters):
        y = x * Reciprocal(Sqrt(ReduceMean(x^2) + eps)) [* w | * (w + c)]    (or x / Sqrt(...))
    RoPE:      y = x * cos + Concat(-x[..., h:], x[..., :h]) * sin
               (partial: Concat(rope(x[..., :r]), x[..., r:]))
    residual:  Add(a, b) of two activations of the output's shape (when shapes are known)
    activation kind: Gelu op (approximate="tanh" -> gelu_tanh), Erf chain (gelu), Tanh + Pow
               chain (gelu_tanh), Sigmoid * x (silu), Relu.

``x^2`` is ``Pow(x, 2)`` or ``Mul(x, x)``; casts between the parts are allowed where the
exporters put them (after the normalisation, before the weight).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from lowbit.passes.view.onnx_graph import (
    back,
    const_array,
    data_users,
    is_const,
    is_op,
    is_split,
    param_of,
    producer,
    shape_of,
    split_source,
)

__all__ = ["NormMatch", "act_kind", "is_residual_add", "match_norm", "rope_source"]


@dataclasses.dataclass
class NormMatch:
    """A decomposed norm. ``out`` is its last node (bias Add, weight Mul, or the normalising
    Div / Mul without an affine part); ``nodes`` are every node of it."""

    kind: str
    x: ir.Value
    out: ir.Node
    nodes: tuple
    weight: ir.Value | None
    bias: ir.Value | None
    offset: float = 0.0


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    ins = list(node.inputs)
    return ins[1] if ins[0] is value else ins[0] if len(ins) == 2 and ins[1] is value else None


def _squared(node: ir.Node | None) -> ir.Value | None:
    """``a`` for ``Pow(a, 2)`` or ``Mul(a, a)``."""
    if is_op(node, "Pow"):
        exp = const_array(node.inputs[1])
        two = exp is not None and exp.size == 1 and float(exp.item()) == 2.0
        return node.inputs[0] if two else None
    if is_op(node, "Mul") and node.inputs[0] is node.inputs[1]:
        return node.inputs[0]
    return None


def _single_user(value: ir.Value, *op_types: str) -> ir.Node | None:
    users = data_users(value)
    return users[0] if len(users) == 1 and is_op(users[0], *op_types) else None


def match_norm(sqrt: ir.Node) -> NormMatch | None:
    """The decomposed LayerNorm or RMSNorm around ``Sqrt`` (see the module docstring)."""
    eps_add = producer(sqrt.inputs[0])
    if not is_op(eps_add, "Add") or not any(is_const(v) for v in eps_add.inputs):
        return None
    mean = next((producer(v) for v in eps_add.inputs if is_op(producer(v), "ReduceMean")), None)
    sq = producer(mean.inputs[0]) if mean is not None else None
    if (a := _squared(sq)) is None:
        return None
    nodes = [sq, mean, eps_add, sqrt]
    centre = producer(a)
    if is_op(centre, "Sub") and is_op(producer(centre.inputs[1]), "ReduceMean") \
            and producer(centre.inputs[1]).inputs[0] is centre.inputs[0]:
        kind, x = "layernorm", centre.inputs[0]
        nodes = [producer(centre.inputs[1]), centre] + nodes
    else:
        kind, x = "rmsnorm", a
    normed = None
    for u in data_users(sqrt.outputs[0]):
        if is_op(u, "Div") and u.inputs[0] is a and u.inputs[1] is sqrt.outputs[0]:
            normed = u
        elif is_op(u, "Reciprocal"):
            normed = next((m for m in data_users(u.outputs[0])
                           if is_op(m, "Mul") and _other(m, u.outputs[0]) is a), None)
            nodes.append(u)
    if normed is None:
        return None
    nodes.append(normed)
    out = normed
    while (cast := _single_user(out.outputs[0], "Cast")) is not None:
        nodes.append(cast)
        out = cast
    weight = bias = None
    offset = 0.0
    if (mul := _single_user(out.outputs[0], "Mul")) is not None:
        scale = _norm_scale(_other(mul, out.outputs[0]))
        if scale is not None:
            weight, offset, wnodes = scale
            nodes += wnodes + [mul]
            out = mul
    if kind == "layernorm" and (add := _single_user(out.outputs[0], "Add")) is not None:
        b = param_of(_other(add, out.outputs[0]))
        if b is not None:
            bias, out = b, add
            nodes.append(add)
    return NormMatch(kind, x, out, tuple(nodes), weight, bias, offset)


def _norm_scale(value: ir.Value | None) -> tuple[ir.Value, float, list] | None:
    """``w`` or ``w + c`` (Gemma) through casts -> (the initializer w, c, the nodes between)."""
    offset, wnodes = 0.0, []
    p = producer(value)
    if is_op(p, "Add"):
        c = next((v for v in p.inputs if (a := const_array(v)) is not None and a.size == 1), None)
        if c is not None:
            offset, wnodes, value = float(const_array(c).item()), [p], _other(p, c)
    w = param_of(value)
    if w is None or const_array(w) is None or const_array(w).ndim != 1:
        return None
    return w, offset, wnodes


def rope_source(node: ir.Node | None) -> ir.Value | None:
    """x for ``x * cos + Concat(-x2, x1) * sin``, or for the partial form
    ``Concat(rope(x[..., :r]), x[..., r:])``."""
    if is_op(node, "Concat") and len(node.inputs) == 2 and is_split(producer(node.inputs[1])):
        rotated = rope_source(producer(node.inputs[0]))
        x = split_source(producer(node.inputs[1]))
        rotated = split_source(producer(rotated)) if is_split(producer(rotated)) else rotated
        return x if rotated is not None and back(rotated) is back(x) else None
    if not is_op(node, "Add") or len(node.inputs) != 2:
        return None
    for rot, plain in (node.inputs, node.inputs[::-1]):
        rot, plain = producer(rot), producer(plain)
        if not (is_op(rot, "Mul") and is_op(plain, "Mul")):
            continue
        for cat in map(producer, rot.inputs):
            if not is_op(cat, "Concat"):
                continue
            parts = [producer(v) for v in cat.inputs]
            negated = [p for p in parts if is_op(p, "Neg")]
            parts = [producer(p.inputs[0]) if is_op(p, "Neg") else p for p in parts]
            sources = {split_source(p) for p in parts if is_split(p)}
            if negated and len(sources) == 1 and (x := sources.pop()) in plain.inputs:
                return x
    return None


def is_residual_add(node: object) -> bool:
    """``a + b`` of two activations of the output's shape (no broadcasting: a stream join).
    Symbolic dims compare as equal (shape inference names them freely: ``unk__3``); a static
    1 against anything else is broadcasting. Unknown shapes (TorchScript files) pass."""
    if not is_op(node, "Add") or len(node.inputs) != 2 or any(is_const(v) for v in node.inputs):
        return False
    shapes = [shape_of(v) for v in (*node.inputs, node.outputs[0])]
    if any(s is None for s in shapes):
        return True
    return all(_same_dims(s, shapes[2]) for s in shapes[:2])


def _same_dims(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, int) and isinstance(y, int) and x != y:
            return False
        if isinstance(x, int) != isinstance(y, int) and 1 in (x, y):
            return False
    return True


def act_kind(ops: list[ir.Node]) -> str:
    """Name the activation computed by ``ops`` (fused op or decomposed form)."""
    types = {n.op_type for n in ops}
    for n in ops:
        if n.op_type in ("Gelu", "FastGelu", "BiasGelu"):
            tanh = n.op_type == "FastGelu" or (
                "approximate" in n.attributes and n.attributes["approximate"].as_string() == "tanh")
            return "gelu_tanh" if tanh else "gelu"
    if {"Tanh", "Pow"} <= types:
        return "gelu_tanh"
    if "Erf" in types:
        return "gelu"
    if {"Sigmoid", "Mul"} <= types or "Silu" in types:
        return "silu"
    if "Relu" in types:
        return "relu"
    return ops[-1].op_type.lower() if ops else "identity"
