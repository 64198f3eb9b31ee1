"""PegPermute: fold PEG's range-based channel permutation into the parameters around it.

For each PEG quantizer with ``permute=True`` (calibrated, not yet frozen), take the *channel
family* of its tensor (``lowbit.passes.fx.peg_family``: every tensor connected to it through
ops that treat the last axis channel by channel). In a post-LN BERT or a Gemma decoder that is
the whole residual stream; at the FFN intermediate, the FFN-in output and the activation after
it. One order ``p`` (``lowbit.quant.peg.shared_order`` over the family's PEG ranges) is then
made the family's channel order, ``x' = x[..., p]``, exactly (indexing):

    producers   linear W' = W[p, :], b' = b[p]        embedding E' = E[:, p]
                parameter read by an add/mul          v' = v[p]   (decomposed RMSNorm's w)
    members     LayerNorm / RMSNorm gamma' = gamma[p], beta' = beta[p]
                PEG quantizers: observed ranges permuted, groups = contiguous runs
    consumers   linear W' = W[:, p]                   (a table tied to a producer embedding:
                                                       E' = E[:, p] once, for both)
    order-free  reductions over the last axis, dtype reads: unchanged
    elsewhere   x = x'[..., argsort(p)]  (aten.index_select, counted with its reason)

so the function is unchanged (up to the order of float sums) and PEG's groups are contiguous
runs of channels, as a group-wise integer GEMM wants them.
The family is found by ``lowbit.passes.peg_family`` and its parameters permuted by
``lowbit.passes.peg_permute.fold`` (both written once over the graph view, shared with the
ONNX pass); the observers and the gathers are FX's own.

Handles: nn.Linear and HF Conv1D weights, fused LayerNorm / RMSNorm and HF's decomposed
RMSNorm (``x * rsqrt(mean(x ** 2, -1) + eps) * (1 + w)``, casts and ``type_as`` around it),
embeddings (scaled by a constant or not), a tied LM head, the BERT pooler (a select on the
sequence axis). Falls back to an explicit gather, with the reason in ``PegReport.gathers``: a
reader that is not a linear, a channel-wise op or an order-free read (the graph output itself:
the model returns the stream in the user's order), and a parameter read elsewhere (tied to a
reader outside the family: the parameter itself is gathered, ``E[:, p]`` at run time).
Skips on purpose: PEG quantizers without ``permute`` (they group channels in place) and
quantizers already folded (a second run reports ``modified=False``).
Refuses: a graph whose quantizers are already frozen (fold between calibrate and freeze).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx

from lowbit.passes.fx.graph_utils import aten, shape_of, tensor_of
from lowbit.passes.fx.insert_fake_quant import fake_quant_nodes
from lowbit.passes.fx.peg_family import Family, discover
from lowbit.passes.infra import Pass
from lowbit.passes.peg_family import fold_plan
from lowbit.passes.peg_permute import fold
from lowbit.passes.peg_permute import order as family_order
from lowbit.passes.reports import PegReport  # re-exported

__all__ = ["PegPermute", "PegReport"]


def _fq(gm, n):
    return gm.get_submodule(n.target)


@dataclasses.dataclass(frozen=True)
class PegPermute(Pass):
    """Fold PEG permutations (module docstring); returns a PegReport."""

    in_place = True

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
            fam = discover(gm, seed)     # a fresh view: the last family changed the graph
            done |= set(fam.quantizers())
            report.families.append(self._apply(gm, fam))
            report.modified = True
        if report.modified:
            gm.graph.lint()
            gm.recompile()
        return report

    def _apply(self, gm: fx.GraphModule, fam: Family) -> dict:
        pegs = [_fq(gm, n) for n in fam.quantizers() if _fq(gm, n).is_peg]
        p, inv = family_order([fq.observer.range() for fq in pegs
                               if fq.spec.granularity.permute])
        touched = fold(fam.view, fold_plan(fam), p)
        for fq in (_fq(gm, n) for n in fam.quantizers()):
            obs = fq.observer
            if fq.is_peg:
                obs.lo, obs.hi = obs.lo[p], obs.hi[p]
                fq.peg_order = torch.arange(fam.c) if fq.spec.granularity.permute else inv
        gathers = []
        for src, readers in fam.gather_in.items():
            self._gather(gm, src, p, [r for r, _ in readers], "in")
            gathers += [(f"{src.name} -> {r.name}", why) for r, why in readers]
        output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        for src, readers in fam.gather_out.items():
            readers = [(r if r is not None else output, why) for r, why in readers]
            self._gather(gm, src, inv, [r for r, _ in readers], "out")
            gathers += [(f"{src.name} -> {r.name}", why) for r, why in readers]
        return {"sites": [fq.site for fq in pegs], "channels": fam.c, "order": p,
                "params": touched, "members": len(fam.nodes), "gathers": gathers}

    @staticmethod
    def _gather(gm, src: fx.Node, index: torch.Tensor, readers: list, kind: str) -> None:
        name, i = f"lowbit_peg_{kind}_{src.name}", 0
        while hasattr(gm, name if not i else f"{name}_{i}"):
            i += 1
        name = name if not i else f"{name}_{i}"
        gm.register_buffer(name, index.clone())
        rank = len(shape_of(src) or tensor_of(gm, src).shape)      # a get_attr: its tensor
        with gm.graph.inserting_after(src):
            idx = gm.graph.get_attr(name)
        with gm.graph.inserting_after(idx):
            g = gm.graph.call_function(aten.index_select.default, (src, rank - 1, idx))
        if "val" in src.meta:
            g.meta["val"] = src.meta["val"]
        g.meta["lowbit_peg_gather"] = kind
        for r in readers:
            r.replace_input_with(src, g)

