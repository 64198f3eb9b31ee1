"""PegPermute: fold PEG's range-based channel permutation into the parameters around it.

For each PEG quantizer with ``permute=True`` (calibrated, not yet frozen), take the *channel
family* of its tensor: every tensor connected to it through ops that treat the last axis
channel by channel (residual adds, LayerNorm / RMSNorm over that axis, elementwise
activations, dropout, casts, views and selects that keep the axis, fake-quant). In a post-LN
BERT that is the whole residual stream; at the FFN intermediate, the FFN-in output and the
activation after it. One order ``p`` (``lowbit.quant.peg.shared_order`` over the family's PEG
ranges) is then made the family's channel order, ``x' = x[..., p]``, exactly (indexing):

    producers   linear W' = W[p, :], b' = b[p]        embedding E' = E[:, p]
                parameter read by an add/mul          v' = v[p]
    members     LayerNorm / RMSNorm gamma' = gamma[p], beta' = beta[p]
                PEG quantizers: observed ranges permuted, groups = contiguous runs
    consumers   linear W' = W[:, p]
    elsewhere   x = x'[..., argsort(p)]  (aten.index_select, counted with its reason)

so the function is unchanged (up to the order of float sums) and PEG's groups are contiguous
runs of channels, as a group-wise integer GEMM wants them.

Handles: nn.Linear and HF Conv1D weights, fused LayerNorm / RMSNorm, embeddings, the BERT
pooler (a select on the sequence axis). Falls back to an explicit gather, with the reason in
``PegReport.gathers``: a reader that is not a linear or a channel-wise op (the graph output
itself: the model returns the stream in the user's order), and a parameter that is tied or read
elsewhere (a tied LM head). Skips on purpose: PEG quantizers without ``permute`` (they group
channels in place) and quantizers already folded (a second run reports ``modified=False``).
Refuses: a graph whose quantizers are already frozen (fold between calibrate and freeze).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx

from lowbit.passes.fx.fold_channel_scales import linear_weight, shared_reason
from lowbit.passes.fx.graph_utils import (
    aten, is_fake_quant, is_op, linear_operands, shape_of, tensor_of,
)
from lowbit.passes.fx.insert_fake_quant import fake_quant_nodes
from lowbit.passes.infra import Pass, PassResult
from lowbit.quant import peg

__all__ = ["PegPermute", "PegReport"]

_LINEARS = (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default)
_NORMS = (aten.layer_norm.default, aten.rms_norm.default)
_UNARY = frozenset({aten.gelu.default, aten.relu.default, aten.tanh.default, aten.silu.default,
                    aten.sigmoid.default, aten.neg.default})
_KEEP = frozenset({aten.dropout.default, aten.clone.default, aten.alias.default,
                   aten.detach.default, aten.contiguous.default, aten.to.dtype,
                   aten.to.dtype_layout, aten._to_copy.default, aten.view.default,
                   aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
                   aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims})
_PICK = frozenset({aten.select.int, aten.slice.Tensor, aten.narrow.default})
_BINARY = frozenset({aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor})


@dataclasses.dataclass
class PegReport(PassResult):
    """PassResult plus, per folded family: its PEG sites, channel count, how many parameters
    absorbed the permutation, and the explicit gathers left (where, why)."""

    families: list[dict] = dataclasses.field(default_factory=list)

    @property
    def gathers(self) -> list[tuple[str, str]]:
        return [g for f in self.families for g in f["gathers"]]


def _last(n: object) -> object:
    s = shape_of(n)
    return s[-1] if s else None


def _fq(gm, n):
    return gm.get_submodule(n.target)


class _Family:
    """Discovery of one channel family (module docstring) from a seed quantizer."""

    def __init__(self, gm: fx.GraphModule, seed: fx.Node):
        self.gm, self.c = gm, _last(seed)
        self.members: list[fx.Node] = []
        self.member_set: set[fx.Node] = set()
        self.sources: dict[fx.Node, str] = {}     # node -> "linear" | "embedding" | "param"
        self.sinks: list[fx.Node] = []
        self.gather_in: dict[fx.Node, list] = {}  # producer -> [(member reader, reason)]
        self.gather_out: dict[fx.Node, list] = {}  # member -> [(reader, reason)]
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
        if t in _NORMS and list(n.args[1]) == [c]:
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
        elif is_op(m, *_LINEARS) and (w := linear_weight(gm, m)) is not None:
            params = [w[0]] + [b for b in _bias(m) if isinstance(b, fx.Node)]
            if all(shared_reason(gm, p, {m}) is None for p in params):
                kind = "linear"
        elif is_op(m, aten.embedding.default) and m.args[0].op == "get_attr":
            if shared_reason(gm, m.args[0], {m}) is None:
                kind = "embedding"
        elif m.op == "get_attr" and _last(m) == self.c:
            if shared_reason(gm, m, {reader}) is None:
                kind = "param"
        if kind is None:
            why = f"producer {m.name} ({m.target}) cannot be permuted"
            self.gather_in.setdefault(m, []).append((reader, why))
            return
        self._add(m, kind or None)
        queue.append(m)

    def _forward(self, n: fx.Node, u: fx.Node, queue: list) -> None:
        if u.target is aten._assert_tensor_metadata.default:
            return
        if (is_op(u, *_LINEARS) and u.args[linear_operands(u)[0]] is n
                and (w := linear_weight(self.gm, u)) is not None
                and shared_reason(self.gm, w[0], {u}) is None):
            if u not in self.sinks:
                self.sinks.append(u)
            return
        if u in self.member_set:
            return
        if u.op != "output" and n in (self._stream_inputs(u) or []):
            self._add(u)
            queue.append(u)
            return
        why = ("graph output: the model returns the tensor in its own channel order"
               if u.op == "output" else f"reader {u.name} ({u.target}) cannot be permuted")
        self.gather_out.setdefault(n, []).append((u, why))

    def quantizers(self) -> list[fx.Node]:
        return [n for n in self.members if is_fake_quant(n)]


def _bias(node: fx.Node) -> list:
    if node.target == aten.addmm.default:
        return [node.args[0]]
    return [node.args[2]] if node.target == aten.linear.default and len(node.args) > 2 else []


@dataclasses.dataclass(frozen=True)
class PegPermute(Pass):
    """Fold PEG permutations (module docstring); returns a PegReport."""

    def requires(self, gm: fx.GraphModule) -> None:
        if self._seeds(gm) and any(_fq(gm, n).frozen and not _fq(gm, n).spec.dynamic
                                   for n in fake_quant_nodes(gm)):
            raise ValueError("PegPermute folds permutations between calibrate and freeze; "
                             "this graph's quantizers are already frozen")

    @staticmethod
    def _seeds(gm: fx.GraphModule) -> list[fx.Node]:
        return [n for n in fake_quant_nodes(gm) if _fq(gm, n).is_peg and
                _fq(gm, n).spec.granularity.permute and _fq(gm, n).peg_order is None]

    def call(self, gm: fx.GraphModule) -> PegReport:
        report = PegReport(gm, False)
        done: set = set()
        for seed in self._seeds(gm):
            if seed in done:
                continue
            fam = _Family(gm, seed)
            done |= set(fam.quantizers())
            report.families.append(self._apply(gm, fam))
            report.modified = True
        if report.modified:
            gm.graph.lint()
            gm.recompile()
        return report

    def _apply(self, gm: fx.GraphModule, fam: _Family) -> dict:
        pegs = [_fq(gm, n) for n in fam.quantizers() if _fq(gm, n).is_peg]
        p = peg.shared_order([fq.observer.range() for fq in pegs
                              if fq.spec.granularity.permute])
        inv = peg.inverse(p)
        touched = 0

        def put(attr: fx.Node, fn) -> None:
            nonlocal touched
            t = tensor_of(gm, attr)
            t.copy_(fn(t.detach()))
            touched += 1

        with torch.no_grad():
            for n in fam.members:
                kind = fam.sources.get(n)
                if kind == "linear":
                    w, layout = linear_weight(gm, n)
                    put(w, lambda t, lay=layout: peg.permute_out(t, p, lay))
                    for b in _bias(n):
                        if isinstance(b, fx.Node):
                            put(b, lambda t: peg.permute_vector(t, p))
                elif kind == "embedding":
                    put(n.args[0], lambda t: peg.permute_table(t, p))
                elif kind == "param":
                    put(n, lambda t: peg.permute_vector(t, p))
                elif is_op(n, *_NORMS):
                    for a in n.args[2:4]:
                        if isinstance(a, fx.Node):
                            put(a, lambda t: peg.permute_vector(t, p))
            for u in fam.sinks:
                w, layout = linear_weight(gm, u)
                put(w, lambda t, lay=layout: peg.permute_in(t, p, lay))
        for fq in (_fq(gm, n) for n in fam.quantizers()):
            obs = fq.observer
            if fq.is_peg:
                obs.lo, obs.hi = obs.lo[p], obs.hi[p]
                fq.peg_order = torch.arange(fam.c) if fq.spec.granularity.permute else inv
        gathers = []
        for src, readers in fam.gather_in.items():
            self._gather(gm, src, p, [r for r, _ in readers], "in")
            gathers += [(f"{src.name} -> {r.name}", why) for r, why in readers]
        for src, readers in fam.gather_out.items():
            self._gather(gm, src, inv, [r for r, _ in readers], "out")
            gathers += [(f"{src.name} -> {r.name}", why) for r, why in readers]
        return {"sites": [fq.site for fq in pegs], "channels": fam.c, "order": p,
                "params": touched, "members": len(fam.members), "gathers": gathers}

    @staticmethod
    def _gather(gm, src: fx.Node, index: torch.Tensor, readers: list, kind: str) -> None:
        name, i = f"lowbit_peg_{kind}_{src.name}", 0
        while hasattr(gm, name if not i else f"{name}_{i}"):
            i += 1
        name = name if not i else f"{name}_{i}"
        gm.register_buffer(name, index.clone())
        shape = shape_of(src)
        with gm.graph.inserting_after(src):
            idx = gm.graph.get_attr(name)
        with gm.graph.inserting_after(idx):
            g = gm.graph.call_function(aten.index_select.default, (src, len(shape) - 1, idx))
        if "val" in src.meta:
            g.meta["val"] = src.meta["val"]
        g.meta["lowbit_peg_gather"] = kind
        for r in readers:
            r.replace_input_with(src, g)

