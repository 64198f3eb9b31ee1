"""Small helpers over torch.fx graphs captured by ``lowbit.capture``.

Three ideas recur in every FX pass:

* **transparent ops** move or re-type data without computing on it (view, transpose, dropout
  in eval, dtype casts...). Following a value through them finds its real producer or consumer.
* **data users**: the users of a node that read its values (not ``_assert_tensor_metadata``,
  not the graph output, not ``type_as`` using the node only as a dtype reference).
* fx nodes compare by graph position (``a < b``), so ``sorted(nodes)`` is graph order.
* **parameter names**: a ``get_attr`` node's target is the dotted parameter name. Tied weights
  have several names; the one owned by the module that runs the op is preferred.

The last section holds the small op patterns transformer spotting is built from (RMSNorm,
RoPE, residual add, activation kind); each matches one node's neighbourhood and nothing more.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable

import torch
from torch import fx

try:
    from torch.fx.experimental.symbolic_shapes import optimization_hint
except ImportError:  # torch < 2.13 (e.g. a deployment machine that only runs lowbit.load)
    from torch.fx.experimental.symbolic_shapes import hint_int as optimization_hint

__all__ = [
    "CASTS",
    "SHAPE_OPS",
    "SPLIT_OPS",
    "RMSMatch",
    "act_kind",
    "ancestors",
    "aten",
    "back",
    "consumers",
    "data_input",
    "data_users",
    "descendants",
    "is_fake_quant",
    "is_op",
    "is_residual_add",
    "is_scalar_scale",
    "is_split",
    "is_transparent",
    "linear_input",
    "linear_operands",
    "match_rmsnorm",
    "numel",
    "param_name",
    "param_names",
    "rope_source",
    "shape_of",
    "split_source",
    "strip_casts",
    "strip_suffix",
    "tensor_of",
]

aten = torch.ops.aten

# Ops whose output is their first argument's data, moved or re-typed.
SHAPE_OPS = frozenset({
    aten.view.default, aten._unsafe_view.default, aten.reshape.default,
    aten.transpose.int, aten.permute.default, aten.contiguous.default, aten.clone.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
    aten.expand.default, aten.flatten.using_ints, aten.unflatten.int, aten.alias.default,
    aten.detach.default, aten.dropout.default, aten.to.dtype, aten.to.dtype_layout,
    aten.to.device, aten._to_copy.default, aten.type_as.default,
    aten.repeat_interleave.self_int,
})
CASTS = frozenset({aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default,
                   aten.type_as.default})
# Ops that take a part of their input (one of q/k/v out of a fused projection).
SPLIT_OPS = frozenset({aten.select.int, aten.slice.Tensor, aten.narrow.default})
_TUPLE_SPLITS = frozenset({
    aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int,
    aten.unsafe_split.Tensor, aten.tensor_split.sections,
})
_NO_DATA = frozenset({aten._assert_tensor_metadata.default})
_SCALE_OPS = frozenset({aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar})


def is_op(node: object, *targets: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def data_input(node: fx.Node) -> fx.Node:
    """The argument whose data a transparent, split or scale op passes on."""
    if is_scalar_scale(node) and not _is_tensor_node(node.args[0]):
        return node.args[1]
    return node.args[0]


def is_fake_quant(node: object) -> bool:
    """A FakeQuantize call (marked by InsertFakeQuant): transparent for spotting, so a
    prepared graph reads the same structure as the float graph."""
    return isinstance(node, fx.Node) and node.op == "call_module" and bool(
        node.meta.get("lowbit_fake_quant"))


def is_transparent(node: object) -> bool:
    return isinstance(node, fx.Node) and (
        (node.op == "call_function" and node.target in SHAPE_OPS) or is_fake_quant(node))


def is_split(node: object) -> bool:
    """select/slice/narrow, or ``getitem`` of split/chunk/unbind."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return is_op(node.args[0], *_TUPLE_SPLITS)
    return node.target in SPLIT_OPS


def split_source(node: fx.Node) -> fx.Node:
    """The tensor a split takes its part from."""
    return node.args[0].args[0] if node.target is operator.getitem else node.args[0]


def _is_tensor_node(x: object) -> bool:
    if not isinstance(x, fx.Node):
        return False
    val = x.meta.get("val")
    return isinstance(val, torch.Tensor) and val.numel() != 1


def is_scalar_scale(node: object) -> bool:
    """``x * c`` or ``x / c`` with a Python number or a one-element tensor ``c``."""
    if not is_op(node, *_SCALE_OPS) or len(node.args) != 2:
        return False
    a, b = node.args
    return _is_tensor_node(a) != _is_tensor_node(b) and (
        _is_tensor_node(a) or node.target in (aten.mul.Tensor, aten.mul.Scalar))


def back(node: object, *, scales: bool = False) -> object:
    """Follow ``node`` back through transparent ops (and scalar scales) to its producer."""
    while is_transparent(node) or (scales and is_scalar_scale(node)):
        node = data_input(node)
    return node


def data_users(node: fx.Node) -> list[fx.Node]:
    """Users that read ``node``'s values."""
    out = []
    for u in node.users:
        if u.op == "output" or u.target in _NO_DATA:
            continue
        if is_op(u, aten.type_as.default) and u.args[0] is not node:
            continue
        out.append(u)
    return out


def consumers(node: fx.Node) -> list[fx.Node]:
    """The first non-transparent data users of ``node``, in graph order."""
    found: dict[fx.Node, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        for u in data_users(n):
            if is_transparent(u) and data_input(u) is n:
                stack.append(u)
            else:
                found[u] = None
    return sorted(found)


def descendants(node: fx.Node) -> list[fx.Node]:
    """Every node that reads ``node``'s data, directly or not, in graph order."""
    seen: dict[fx.Node, None] = {}
    stack = [node]
    while stack:
        for u in data_users(stack.pop()):
            if u not in seen:
                seen[u] = None
                stack.append(u)
    return sorted(seen)


def ancestors(node: fx.Node, floor: fx.Node, stop: Iterable) -> tuple[list, list]:
    """Walk back from ``node`` over ops newer than ``floor``; returns (the ``stop`` nodes
    reached, the ops passed on the way), each in graph order."""
    stop = set(stop)
    hit, passed, stack, seen = set(), [], [node], set()
    while stack:
        n = stack.pop()
        if n in seen or not (n.op == "call_function" or is_fake_quant(n)) or not n > floor:
            continue
        seen.add(n)
        if n in stop:
            hit.add(n)
            continue
        passed.append(n)
        stack.extend(n.all_input_nodes)
    return sorted(hit), sorted(passed)


def shape_of(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def numel(node: object) -> int | None:
    """Element count of ``node``'s value; symbolic sizes count at their example value."""
    shape = shape_of(node)
    if shape is None:
        return None
    count = 1
    for size in shape:
        count *= optimization_hint(size)
    return count


def strip_casts(node: object) -> object:
    while is_op(node, *CASTS) or is_fake_quant(node):
        node = node.args[0]
    return node


def tensor_of(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    """The parameter or buffer a ``get_attr`` node reads (through dtype casts)."""
    node = strip_casts(node)
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: object = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


def param_names(gm: fx.GraphModule) -> dict[int, list[str]]:
    """id(tensor) -> every dotted name under which ``gm`` holds it (tied weights: several)."""
    names: dict[int, list[str]] = {}
    for name, t in gm.named_parameters(remove_duplicate=False):
        names.setdefault(id(t), []).append(name)
    return names


def param_name(gm: fx.GraphModule, attr: fx.Node, user: fx.Node,
               aliases: dict[int, list[str]]) -> str:
    """The dotted name of the parameter ``attr`` reads, as seen by the op ``user``.

    For a tied weight the alias owned by the innermost module running ``user`` wins, so a
    word embedding tied to ``lm_head`` is still named ``transformer.wte.weight``.
    """
    attr = strip_casts(attr)
    tensor = tensor_of(gm, attr)
    names = aliases.get(id(tensor), []) if tensor is not None else []
    stack = user.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        for name in names:
            if name.rpartition(".")[0] == path:
                return name
    return str(attr.target)


def strip_suffix(name: str, suffixes: Iterable[str] = (".weight", "_weight")) -> str:
    for s in suffixes:
        if name.endswith(s):
            return name[: -len(s)]
    return name


# ---- op patterns ---------------------------------------------------------------------------
def linear_operands(node: fx.Node) -> tuple[int, int]:
    """Argument positions (activation, weight) of a linear / addmm / mm / matmul node."""
    return (1, 2) if node.target == aten.addmm.default else (0, 1)


def linear_input(node: fx.Node) -> fx.Node:
    """The activation operand of a linear / addmm / mm / matmul node."""
    return node.args[linear_operands(node)[0]]


def is_residual_add(node: object) -> bool:
    """``a + b`` of two tensors of the output's shape (no broadcasting: a stream join)."""
    return (is_op(node, aten.add.Tensor) and len(node.args) == 2
            and all(shape_of(a) == shape_of(node) for a in node.args))


def rope_source(node: object) -> fx.Node | None:
    """x for ``x * cos + rotate_half(x) * sin``, rotate_half(x) = cat(-x[..., h:], x[..., :h]),
    or for partial RoPE ``cat(rope(x[..., :r]), x[..., r:])`` (Phi-3)."""
    if is_op(node, aten.cat.default) and len(parts := node.args[0]) == 2 and is_split(parts[1]):
        rotated, x = rope_source(parts[0]), split_source(parts[1])
        rotated = split_source(rotated) if is_split(rotated) else rotated
        return x if rotated is not None and back(rotated) is back(x) else None
    if not is_op(node, aten.add.Tensor) or len(node.args) != 2:
        return None
    for rot, plain in (node.args, node.args[::-1]):
        if not (is_op(rot, aten.mul.Tensor) and is_op(plain, aten.mul.Tensor)):
            continue
        for cat in rot.args:
            if not is_op(cat, aten.cat.default):
                continue
            negated = [p for p in cat.args[0] if is_op(p, aten.neg.default)]
            parts = [p.args[0] if is_op(p, aten.neg.default) else p for p in cat.args[0]]
            sources = {split_source(p) for p in parts if is_split(p)}
            if negated and len(sources) == 1 and (x := sources.pop()) in plain.args:
                return x
    return None


@dataclasses.dataclass
class RMSMatch:
    """A decomposed RMSNorm. ``out`` is the weight product (``x * rsqrt`` when it has no
    weight); casts after it are not part of the norm. ``nodes`` are in graph order."""

    x: fx.Node
    out: fx.Node
    nodes: tuple
    weight: fx.Node | None
    offset: float


def match_rmsnorm(rsqrt: fx.Node) -> RMSMatch | None:
    """``x * rsqrt(mean(x^2, -1, keepdim) + eps) [cast] [* w | * (w + c)]`` around ``rsqrt``."""
    eps_add = rsqrt.args[0]
    if not is_op(eps_add, aten.add.Tensor, aten.add.Scalar):
        return None
    mean = next((a for a in eps_add.args if is_op(a, aten.mean.dim)), None)
    sq = mean.args[0] if mean is not None else None
    squared = (is_op(sq, aten.pow.Tensor_Scalar) and sq.args[1] == 2) or (
        is_op(sq, aten.mul.Tensor) and sq.args[0] is sq.args[1])
    if not squared:
        return None
    x = sq.args[0]
    normed = next((u for u in rsqrt.users if is_op(u, aten.mul.Tensor) and x in u.args), None)
    if normed is None:
        return None
    nodes, out, casts = [sq, mean, eps_add, rsqrt, normed], normed, []
    while len(users := data_users(out)) == 1 and is_op(users[0], *CASTS):
        out = users[0]
        casts.append(out)
    users = data_users(out)
    if len(users) == 1 and is_op(users[0], aten.mul.Tensor):
        mul = users[0]
        scale = _norm_scale(mul.args[1] if mul.args[0] is out else mul.args[0])
        if scale is not None:
            weight, offset, wnodes = scale
            return RMSMatch(x, mul, tuple(sorted(nodes + casts + wnodes + [mul])), weight,
                            offset)
    return RMSMatch(x, normed, tuple(nodes), None, 0.0)


def _norm_scale(node: object) -> tuple[fx.Node, float, list] | None:
    """``w`` or ``w + c`` through dtype casts -> (the get_attr of w, c, the nodes between)."""
    offset, wnodes = 0.0, []
    if is_op(node, aten.add.Tensor, aten.add.Scalar) and isinstance(node.args[1], (int, float)):
        offset, wnodes, node = float(node.args[1]), [node], node.args[0]
    while is_op(node, *CASTS):
        wnodes.append(node)
        node = node.args[0]
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return node, offset, wnodes
    return None


_ACT_OPS = {aten.silu.default: "silu", aten.relu.default: "relu", aten.gelu.default: "gelu"}


def act_kind(ops: list[fx.Node]) -> str:
    """Name the activation computed by ``ops`` (fused op or decomposed form)."""
    for n in ops:
        if n.target in _ACT_OPS:
            tanh = n.kwargs.get("approximate", (n.args[1:2] or ["none"])[0]) == "tanh"
            return "gelu_tanh" if tanh else _ACT_OPS[n.target]
    targets = {n.target for n in ops}
    if {aten.tanh.default, aten.pow.Tensor_Scalar} <= targets:
        return "gelu_tanh"
    if aten.erf.default in targets:
        return "gelu"
    if {aten.sigmoid.default, aten.mul.Tensor} <= targets:
        return "silu"
    return str(ops[-1].target).split(".")[-2] if ops else "identity"
