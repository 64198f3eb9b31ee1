"""Structure checks: op counts, and the pass contract of ``lowbit/passes/infra.py``.

``op_counts`` / ``assert_op_counts`` count operators of an FX graph or an ONNX model;
``assert_untouched`` and ``assert_idempotent`` check ``pass_(graph) -> PassResult(graph,
modified)`` with an honest ``modified``, on a copy of the graph (by a printed structure and a
digest of every tensor).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx
import onnx.numpy_helper
import onnx_ir as ir
import torch
import torch.fx

from lowbit.passes.infra import PassResult
from lowbit.testing.run import is_onnx, onnx_proto
from lowbit.warning_filters import copy_graph

__all__ = ["assert_idempotent", "assert_op_counts", "assert_untouched", "op_counts"]

_DIFF_LINES_SHOWN = 40


def op_counts(graph: Any) -> Counter[str]:
    """Operator counts of an FX graph (GraphModule or ExportedProgram) or an ONNX model.

    FX keys: ``str(target)`` for ATen/custom ops (``aten.linear.default``), the function name
    for Python functions (``getitem``), ``method:NAME`` and ``module:CLASS``; torch.export's
    input guard (``_guards_fn``) is not an op and is not counted. ONNX keys: ``OpType`` in the
    default domain, ``domain::OpType`` otherwise, subgraphs included.
    """
    if isinstance(graph, torch.export.ExportedProgram):
        graph = graph.graph_module
    if isinstance(graph, torch.fx.GraphModule):
        return Counter(_fx_op_name(graph, n) for n in graph.graph.nodes
                       if n.op.startswith("call_") and n.target != "_guards_fn")
    if is_onnx(graph):
        counts: Counter[str] = Counter()
        _count_onnx(onnx_proto(graph).graph, counts)
        return counts
    raise TypeError(f"op_counts takes an fx.GraphModule, ExportedProgram or ONNX model, "
                    f"got {type(graph).__name__}")


def _fx_op_name(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return f"method:{node.target}"
    if node.op == "call_module":
        return f"module:{type(gm.get_submodule(node.target)).__name__}"
    if isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _count_onnx(graph: onnx.GraphProto, counts: Counter[str]) -> None:
    for node in graph.node:
        default = node.domain in ("", "ai.onnx")
        counts[node.op_type if default else f"{node.domain}::{node.op_type}"] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _count_onnx(sub, counts)


def assert_op_counts(graph: Any, expected: Mapping[str, int], *,
                     exact: bool = False) -> Counter[str]:
    """Assert the ops named in ``expected`` occur that many times (0: absent). ``exact`` also
    refuses any op not named. Returns all counts."""
    counts = op_counts(graph)
    keys = set(expected) | (set(counts) if exact else set())
    wrong = [f"  {k}: expected {expected.get(k, 0)}, got {counts.get(k, 0)}"
             for k in sorted(keys) if expected.get(k, 0) != counts.get(k, 0)]
    if wrong:
        found = [f"  {k}: {v}" for k, v in sorted(counts.items())]
        raise AssertionError("\n".join(["op counts differ:", *wrong, "ops in the graph:", *found]))
    return counts


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """A graph's printed structure and a digest of each of its tensors (name -> digest)."""

    code: str
    tensors: dict[str, str]


def _snapshot(graph: Any) -> _Snapshot:
    if isinstance(graph, torch.fx.GraphModule):
        named = itertools.chain(graph.named_parameters(), graph.named_buffers(),
                                ((n.target, operator.attrgetter(n.target)(graph))
                                 for n in graph.graph.find_nodes(op="get_attr")))
        tensors = {name: _digest(t.dtype, t.shape, _tensor_bytes(t))
                   for name, t in named if isinstance(t, torch.Tensor)}
        return _Snapshot(graph.graph.python_code("self").src, tensors)
    proto = onnx_proto(graph)
    structure = onnx.ModelProto()
    structure.CopyFrom(proto)
    del structure.graph.initializer[:]
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    tensors = {n: _digest(a.dtype, a.shape, a.tobytes()) for n, a in arrays.items()}
    return _Snapshot(onnx.printer.to_text(structure), tensors)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _digest(dtype: Any, shape: Sequence[int], data: bytes) -> str:
    return f"{dtype} {list(shape)} sha1:{hashlib.sha1(data).hexdigest()[:12]}"


def _snapshot_diff(a: _Snapshot, b: _Snapshot) -> str:
    lines = list(difflib.unified_diff(a.code.splitlines(), b.code.splitlines(), "before", "after",
                                      lineterm="", n=1))
    if len(lines) > _DIFF_LINES_SHOWN:
        lines = lines[:_DIFF_LINES_SHOWN] + [f"... ({len(lines) - _DIFF_LINES_SHOWN} more lines)"]
    for name in sorted(set(a.tensors) | set(b.tensors)):
        if a.tensors.get(name) != b.tensors.get(name):
            lines.append(f"tensor {name}: {a.tensors.get(name, 'absent')} -> "
                         f"{b.tensors.get(name, 'absent')}")
    return "\n".join(lines)


def _copy_graph(graph: Any) -> Any:
    if isinstance(graph, ir.Model):  # deepcopy recurses too deep on onnx_ir graphs
        return ir.serde.deserialize_model(ir.serde.serialize_model(graph))
    if isinstance(graph, (torch.fx.GraphModule, onnx.ModelProto)):
        return copy_graph(graph)
    raise TypeError(f"expected an fx.GraphModule, onnx.ModelProto or onnx_ir.Model, "
                    f"got {type(graph).__name__}")


def _run_pass(pass_: Callable[[Any], PassResult], graph: Any) -> PassResult:
    result = pass_(graph)
    if not isinstance(result, PassResult):
        raise TypeError(f"{_pass_name(pass_)} returned {type(result).__name__}, "
                        f"not PassResult")
    return result


def _pass_name(pass_: Any) -> str:
    return getattr(pass_, "name", None) or type(pass_).__name__


def assert_untouched(pass_: Callable[[Any], PassResult], graph: Any) -> None:
    """Assert ``pass_`` leaves ``graph`` (run on a copy) alone and reports ``modified=False``."""
    work = _copy_graph(graph)
    before = _snapshot(work)
    result = _run_pass(pass_, work)
    diff = _snapshot_diff(before, _snapshot(result.graph))
    problems = (["reported modified=True"] if result.modified else []) + (
        [f"changed the graph:\n{diff}"] if diff else [])
    if problems:
        raise AssertionError(f"{_pass_name(pass_)} must leave this graph alone, but it "
                             + " and ".join(problems))


def assert_idempotent(pass_: Callable[[Any], PassResult], graph: Any) -> Any:
    """Assert a second run of ``pass_`` on its own output reports ``modified=False`` and changes
    nothing, and that a first run reporting ``modified=False`` changed nothing either.

    Runs on a copy of ``graph``; returns the graph after the first run.
    """
    name = _pass_name(pass_)
    work = _copy_graph(graph)
    original = _snapshot(work)
    first = _run_pass(pass_, work)
    once = _snapshot(first.graph)
    diff = _snapshot_diff(original, once)
    if diff and not first.modified:
        raise AssertionError(f"{name} reported modified=False but changed the graph:\n{diff}")
    second = _run_pass(pass_, first.graph)
    diff = _snapshot_diff(once, _snapshot(second.graph))
    if second.modified or diff:
        raise AssertionError(
            f"{name} is not idempotent: on its own output it reported "
            f"modified={second.modified}" + (f" and changed the graph:\n{diff}" if diff else "")
        )
    return first.graph
