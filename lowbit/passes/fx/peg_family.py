"""Channel families for PegPermute: which tensors share one channel order, and where it ends.

A family is grown from a seed PEG quantizer over the tensors ``x`` whose last axis holds the
same C channels; ``x' = x[..., p]`` is exact across every rule below (indexing moves values).

    members    ops that act on the last axis channel by channel: residual adds, sub / mul /
               div with a broadcast (last dim 1) or channel-indexed operand, LayerNorm /
               RMSNorm over that axis, elementwise maps (GELU, SiLU, ``x ** s``, rsqrt, ...),
               dropout, casts (``type_as(x, y)`` casts x and reads only y's dtype), views and
               selects that keep the axis, fake-quant
    producers  a linear (rows), an embedding (table columns), a parameter read by a member
    consumers  a linear (input columns)
    readers    that need no order: reductions over the last axis (``mean(x, -1, keepdim)``,
               sum, amax, amin, var: the same terms in another order) and dtype-only reads
               (``type_as(y, x)``, metadata asserts); decomposed RMSNorm is
               ``x * rsqrt(mean(x ** 2, -1) + eps) * (1 + w)``: every node is a member or such
               a reader, and ``w`` (behind its cast and ``+ 1``) is a parameter producer
    otherwise  an explicit gather (``PegPermute`` inserts it; the reason is kept here)

Tied parameters. A parameter read elsewhere is refused (permuting it would change the other
reader), except a table tied between an embedding and a linear of the *same* family: the
embedding takes ``E[:, p]`` and the linear ``W[:, p]`` ([out, in]), the same permutation of
the same tensor, so it is permuted once (a tied LM head: no gather at either end). ``discover``
tries the tie and keeps it only if every reader of the tensor ends up in one of those roles.
"""

from __future__ import annotations

from torch import fx

from lowbit.passes.fx.fold_channel_scales import linear_weight, shared_reason
from lowbit.passes.fx.graph_utils import (
    aten,
    data_users,
    is_fake_quant,
    is_op,
    linear_operands,
    shape_of,
    tensor_of,
)

__all__ = ["LINEARS", "NORMS", "Family", "bias_of", "discover"]

LINEARS = (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default)
NORMS = (aten.layer_norm.default, aten.rms_norm.default)
_UNARY = frozenset({aten.gelu.default, aten.relu.default, aten.tanh.default, aten.silu.default,
                    aten.sigmoid.default, aten.neg.default, aten.abs.default,
                    aten.pow.Tensor_Scalar, aten.rsqrt.default, aten.sqrt.default})
_KEEP = frozenset({aten.dropout.default, aten.clone.default, aten.alias.default,
                   aten.detach.default, aten.contiguous.default, aten.to.dtype,
                   aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default,
                   aten.view.default, aten._unsafe_view.default, aten.reshape.default,
                   aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
                   aten.squeeze.dims})
_PICK = frozenset({aten.select.int, aten.slice.Tensor, aten.narrow.default})
_BINARY = frozenset({aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor})
_REDUCE = frozenset({aten.mean.dim, aten.sum.dim_IntList, aten.amax.default,
                     aten.amin.default, aten.var.correction})


def _last(n: object) -> object:
    s = shape_of(n)
    return s[-1] if s else None


def bias_of(node: fx.Node) -> list:
    if node.target == aten.addmm.default:
        return [node.args[0]]
    return [node.args[2]] if node.target == aten.linear.default and len(node.args) > 2 else []


def _order_free(n: fx.Node, u: fx.Node) -> bool:
    """``u`` reads ``n`` without depending on its channel order (module docstring)."""
    if u.op == "output":
        return False
    if u not in data_users(n):
        return True                      # metadata assert, type_as(y, n)
    if u.target not in _REDUCE or u.args[0] is not n or n in u.args[1:]:
        return False
    rank = len(shape_of(n) or ())
    dims = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim")
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return True                      # reduces every axis
    dims = [dims] if isinstance(dims, int) else list(dims)
    return bool(rank) and any(d % rank == rank - 1 for d in dims)


class Family:
    """One channel family (module docstring) grown from ``seed``; ``tied``: ids of tied tables
    to accept as producer and consumer (``discover`` decides which)."""

    def __init__(self, gm: fx.GraphModule, seed: fx.Node, tied: frozenset = frozenset()):
        self.gm, self.c, self.tied = gm, _last(seed), tied
        self.members: list[fx.Node] = []
        self.member_set: set[fx.Node] = set()
        self.sources: dict[fx.Node, str] = {}     # node -> "linear" | "embedding" | "param"
        self.sinks: list[fx.Node] = []
        self.gather_in: dict[fx.Node, list] = {}  # producer -> [(member reader, reason)]
        self.gather_out: dict[fx.Node, list] = {}  # member -> [(reader, reason)]
        self.tie_candidates: set[int] = set()     # tables refused only for being shared
        self._add(seed)
        queue = [seed]
        while queue:
            n = queue.pop()
            for m in self._stream_inputs(n) or []:
                self._backward(m, n, queue)
            if n.op == "get_attr":
                continue
            for u in list(n.users):
                self._forward(n, u, queue)

    def _add(self, n: fx.Node, kind: str | None = None) -> None:
        self.members.append(n)
        self.member_set.add(n)
        if kind:
            self.sources[n] = kind

    def _free(self, attr: fx.Node, owner: fx.Node, table: bool = False) -> bool:
        """``attr``'s tensor may be permuted for ``owner``; a refused ``table`` (embedding
        table, linear weight) is remembered as a tie candidate."""
        t = tensor_of(self.gm, attr)
        if id(t) in self.tied:
            return True
        if shared_reason(self.gm, attr, {owner}) is None:
            return True
        if table:
            self.tie_candidates.add(id(t))
        return False

    def _stream_inputs(self, n: fx.Node) -> list[fx.Node] | None:
        """The inputs of ``n`` that carry the family's channels, if ``n`` is channel-wise."""
        c = self.c
        if n in self.sources:
            return []
        if is_fake_quant(n):
            return [n.args[0]]
        if n.op != "call_function" or _last(n) != c:
            return None
        t, x = n.target, n.args[0] if n.args else None
        if t in _UNARY or t in _KEEP or t in _PICK:
            if _last(x) != c or (t is aten.dropout.default and n.args[2] is True):
                return None
            rank = len(shape_of(x) or ())
            if t in _PICK and (not rank or n.args[1] % rank == rank - 1):
                return None
            return [x]
        if t in _BINARY:
            out = []
            for a in n.args[:2]:
                if isinstance(a, fx.Node) and _last(a) == c:
                    out.append(a)
                elif isinstance(a, fx.Node) and _last(a) not in (None, 1):
                    return None
            return out
        if t in NORMS and list(n.args[1]) == [c]:
            params = [a for a in n.args[2:4] if isinstance(a, fx.Node)]
            if all(shared_reason(self.gm, a, {n}) is None for a in params):
                return [x]
        return None

    def _backward(self, m: fx.Node, reader: fx.Node, queue: list) -> None:
        if m in self.member_set:
            return
        gm, kind = self.gm, None
        if self._stream_inputs(m) is not None:
            kind = ""
        elif is_op(m, *LINEARS) and (w := linear_weight(gm, m)) is not None:
            params = [w[0]] + [b for b in bias_of(m) if isinstance(b, fx.Node)]
            if all(shared_reason(gm, p, {m}) is None for p in params):
                kind = "linear"
        elif is_op(m, aten.embedding.default) and m.args[0].op == "get_attr":
            if self._free(m.args[0], m, table=True):
                kind = "embedding"
        elif (m.op == "get_attr" and _last(m) == self.c
              and shared_reason(gm, m, {reader}) is None):
            kind = "param"
        if kind is None:
            why = f"producer {m.name} ({m.target}) cannot be permuted"
            self.gather_in.setdefault(m, []).append((reader, why))
            return
        self._add(m, kind or None)
        queue.append(m)

    def _forward(self, n: fx.Node, u: fx.Node, queue: list) -> None:
        if (is_op(u, *LINEARS) and u.args[linear_operands(u)[0]] is n
                and (w := linear_weight(self.gm, u)) is not None
                and self._free(w[0], u, table=w[1] == "out_in")):
            if u not in self.sinks:
                self.sinks.append(u)
            return
        if u in self.member_set:
            return
        if u.op != "output" and n in (self._stream_inputs(u) or []):
            self._add(u)
            queue.append(u)
            return
        if _order_free(n, u):
            return
        why = ("graph output: the model returns the tensor in its own channel order"
               if u.op == "output" else f"reader {u.name} ({u.target}) cannot be permuted")
        self.gather_out.setdefault(n, []).append((u, why))

    def quantizers(self) -> list[fx.Node]:
        return [n for n in self.members if is_fake_quant(n)]

    def folds_tie(self, tid: int) -> bool:
        """Every reader of the tied tensor ``tid`` is an embedding producer or an [out, in]
        linear consumer of this family (both take the columns ``[:, p]``)."""
        readers = [u for a in self.gm.graph.nodes if a.op == "get_attr"
                   and id(tensor_of(self.gm, a)) == tid for u in data_users(a)]
        for r in readers:
            emb = self.sources.get(r) == "embedding"
            lin = r in self.sinks and linear_weight(self.gm, r)[1] == "out_in" and \
                id(tensor_of(self.gm, linear_weight(self.gm, r)[0])) == tid
            if not (emb or lin):
                return False
        return bool(readers)


def discover(gm: fx.GraphModule, seed: fx.Node) -> Family:
    """The family of ``seed``, with the tied tables that fold at both ends (module docstring)
    permuted in place; a tie that does not fold is dropped and discovery runs again."""
    fam = Family(gm, seed)
    tied = frozenset(fam.tie_candidates)
    while tied:
        trial = Family(gm, seed, tied)
        keep = frozenset(t for t in tied if trial.folds_tie(t))
        if keep == tied:
            return trial
        tied = keep
    return fam
