"""Small graph edits over onnx_ir graphs that the ONNX passes share: add a uniquely named
initializer, drop one nobody reads, list the default-domain DequantizeLinear nodes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["add_initializer", "dq_nodes", "drop_if_unused", "remove_dead"]


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray,
                    dtype: ir.DataType) -> ir.Value:
    """Register ``array`` as a new initializer of ``graph`` named ``name`` (``name_1``,
    ``name_2`` ... when taken by an initializer or a node output); returns its value."""
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs}
    unique, i = name, 0
    while unique in taken:
        i += 1
        unique = f"{name}_{i}"
    value = ir.Value(name=unique, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                     const_value=ir.Tensor(array, dtype=dtype, name=unique))
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove ``value`` from ``graph``'s initializers when it is one that nothing reads."""
    if value is not None and value.is_initializer() and not value.uses() \
            and not value.is_graph_output():
        graph.initializers.pop(value.name)


def remove_dead(graph: ir.Graph, node: ir.Node | None) -> None:
    """Remove ``node`` when nothing reads its outputs, then its now-unread inputs' producers
    (a Transpose of the weight, say) and initializers."""
    if node is None or node.graph is not graph or any(
            o.uses() or o.is_graph_output() for o in node.outputs):
        return
    inputs = list(node.inputs)
    graph.remove(node, safe=True)
    for v in inputs:
        if v is None:
            continue
        producer = v.producer()
        if producer is not None:
            remove_dead(graph, producer)
        else:
            drop_if_unused(graph, v)


def dq_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The default-domain DequantizeLinear nodes of ``graph``, in graph order."""
    return [n for n in graph if n.op_type == "DequantizeLinear" and n.domain == ""]
