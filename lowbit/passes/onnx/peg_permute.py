"""PegPermute (ONNX): fold PEG's range-based channel permutation into the initializers.

The ONNX twin of ``lowbit.passes.fx.peg_permute``, run on the float model between calibration
and ``InsertQDQ`` (``quantize_onnx`` does). For each PEG site with ``permute=True`` take the
*channel family* of its tensor (``peg_family.Family``): every value connected to it through
ops that treat the last axis (C channels) channel by channel. One order ``p``
(``lowbit.quant.peg.shared_order`` over the family's PEG ranges) becomes the family's channel
order, ``x' = x[..., p]``, exactly::

    producers   MatMul / Gemm weight: output channels permuted (+ Gemm bias)
                initializer read by a member: an embedding table read by Gather (axis 0),
                a bias / gamma read by Add / Mul / ..., a norm's gamma, beta:  v' = v[..., p]
    members     LayerNormalization / RMSNormalization (last axis);   elementwise ops
                (Gelu, Erf, Tanh, Relu, Sigmoid, Cast, ...);  Reshape / (Un)Squeeze / Expand /
                Transpose keeping the last axis;  Gather / Slice off the last axis (a pooler)
    readers     ReduceMean / ReduceSum / ... over the last axis alone (decomposed norms):
                order-invariant, nothing to do
    consumers   MatMul / Gemm (the activation operand) weight: input channels permuted
                (a weight tied to an embedding table of the family: permuted once, for both)
    elsewhere   an explicit Gather(x, index, axis=-1), counted with its reason

so the function is unchanged (up to the order of float sums) and each PEG site's groups are
contiguous runs of channels, as ``linear_u8s8_peg`` wants them. The family is found by
``lowbit.passes.peg_family`` and its initializers permuted by ``lowbit.passes.peg_permute.fold``
(both written once over the graph view, shared with the FX pass); the ranges, copies and
gathers are ONNX's own. The pass leaves its ``sites`` and ``ranges`` as they are: the report
(``OnnxPegReport``) carries the ranges with those of the family's PEG sites permuted alike, and
the sites with the value each now quantizes; ``peg_orders`` gives the grouping order
``lowbit.quant.peg.spec_qparams`` then uses (identity for permuted sites, ``argsort(p)`` for
PEG sites of the family that group in place).

Gathers left, with the reason in ``PegReport.gathers``: a graph output (the model returns
the stream in the user's order: the output keeps its name), a graph input, a reader or
producer that is not a linear or a channel-wise op, an initializer that is shared or read
outside the family (a shared bias or gamma, as exporters deduplicate equal ones, gets a
permuted copy instead), values of unknown shape. Skips: PEG sites without ``permute`` and
sites done by an earlier run (``metadata_props["lowbit.peg_permuted"]``): a second run
reports ``modified=False``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import torch

from lowbit.config import PerEmbeddingGroup
from lowbit.passes.infra import Pass
from lowbit.passes.onnx.edit import add_initializer
from lowbit.passes.onnx.graph_utils import const_array, data_users
from lowbit.passes.onnx.peg_family import Family
from lowbit.passes.peg_family import fold_plan
from lowbit.passes.peg_permute import fold
from lowbit.passes.peg_permute import order as family_order
from lowbit.passes.reports import PegReport
from lowbit.quant import peg

__all__ = ["DONE_KEY", "OnnxPegReport", "PegPermute", "peg_orders"]

DONE_KEY = "lowbit.peg_permuted"


@dataclasses.dataclass
class OnnxPegReport(PegReport):
    """``PegReport`` plus what the caller quantizes next: ``ranges`` (every site's, those of
    the folded families' PEG sites permuted by their family's ``p``) and ``sites`` (as given,
    a site whose value got a gather now naming the gather's output)."""

    ranges: dict = dataclasses.field(default_factory=dict)
    sites: tuple = ()


@dataclasses.dataclass(frozen=True)
class PegPermute(Pass):
    """Fold PEG permutations (module docstring) for ``sites`` (``Plan.static()``) whose
    per-channel calibrated ``ranges`` (``{site name: (lo, hi)}``) come from ``observe``;
    returns an ``OnnxPegReport`` (the permuted ranges are its ``ranges``: the pass changes
    neither ``ranges`` nor ``sites``)."""

    in_place = True

    sites: tuple
    ranges: dict

    def _seeds(self, model: ir.Model) -> list:
        done = set(json.loads(model.metadata_props.get(DONE_KEY, "[]")))
        return [s for s in self.sites if isinstance(s.spec.granularity, PerEmbeddingGroup)
                and s.spec.granularity.permute and s.name not in done]

    def call(self, model: ir.Model) -> OnnxPegReport:
        report = OnnxPegReport(model, False, ranges=dict(self.ranges), sites=self.sites)
        covered: set = set()
        for seed in self._seeds(model):
            if seed.name in covered:
                continue
            fam = Family(seed.value, model.graph)
            fam.settle_params()
            pegs = [s for s in report.sites if isinstance(s.spec.granularity, PerEmbeddingGroup)
                    and s.value in fam.values]
            covered |= {s.name for s in pegs}
            report.families.append(self._apply(model.graph, fam, pegs, report))
            report.modified = True
        if report.modified:
            done = json.loads(model.metadata_props.get(DONE_KEY, "[]"))
            model.metadata_props[DONE_KEY] = json.dumps(sorted({*done, *covered}))
        return report

    @staticmethod
    def _apply(graph: ir.Graph, fam: Family, pegs: list, report: OnnxPegReport) -> dict:
        ranges = report.ranges
        p, inv = family_order([ranges[s.name] for s in pegs if s.spec.granularity.permute])
        touched = fold(fam.view, fold_plan(fam), p)
        for name, reads in fam.copies.items():
            a = graph.initializers[name]
            arr = peg.permute_vector(const_array(a), p)
            copy = add_initializer(graph, f"{name}_peg", arr, a.dtype)
            for value, r in reads:
                _rewire(r, value, copy)
            touched += 1
        for s in pegs:
            lo, hi = ranges[s.name]
            ranges[s.name] = (lo[p], hi[p])
        gathers = []
        for v, readers in fam.gather_in.items():
            g = _gather(graph, v, p, f"lowbit_peg_in_{v.name}")
            for r, _ in readers:
                for u in [r] if r is not None else [u for u in data_users(v)
                                                    if u in fam.node_set or u in fam.sinks]:
                    _rewire(u, v, g)
            report.sites = tuple(dataclasses.replace(s, value=g) if s.value is v else s
                                 for s in report.sites)
            gathers += [(f"{v.name} -> {r.name if r else 'family'}", why) for r, why in readers]
        for v, readers in fam.gather_out.items():
            g = _gather(graph, v, inv, f"lowbit_peg_out_{v.name}")
            for r, why in readers:
                gathers.append((f"{v.name} -> {r.name if r else 'graph output'}", why))
                if r is None:
                    name = v.name
                    v.name, idx = f"{name}_lowbit_peg", list(graph.outputs).index(v)
                    g.name, graph.outputs[idx] = name, g
                else:
                    _rewire(r, v, g)
        return {"sites": [s.name for s in pegs], "channels": fam.c, "order": p,
                "params": touched, "members": len(fam.nodes), "gathers": gathers}


def _gather(graph: ir.Graph, v: ir.Value, index: torch.Tensor, name: str) -> ir.Value:
    """``Gather(v, index, axis=-1)`` inserted after ``v``'s producer (or first)."""
    idx = add_initializer(graph, name, index.numpy().astype(np.int64), ir.DataType.INT64)
    node = ir.Node("", "Gather", [v, idx], attributes=[ir.AttrInt64("axis", -1)], name=name)
    out = node.outputs[0]
    out.name, out.type = f"{name}_out", v.type
    out.shape = ir.Shape(v.shape) if v.shape is not None else None
    p = v.producer()
    if p is not None:
        graph.insert_after(p, node)
    else:
        graph.insert_before(next(iter(graph)), node)
    return out


def _rewire(node: ir.Node, old: ir.Value, new: ir.Value) -> None:
    for i, x in enumerate(node.inputs):
        if x is old:
            node.replace_input_with(i, new)


def peg_orders(report: PegReport, sites) -> dict[str, torch.Tensor]:
    """The grouping order ``spec_qparams`` takes per PEG site of a folded family: identity
    for permuted sites (contiguous groups), ``argsort(p)`` for in-place ones."""
    by_name = {s.name: s for s in sites}
    out = {}
    for fam in report.families:
        for name in fam["sites"]:
            permute = by_name[name].spec.granularity.permute
            out[name] = torch.arange(fam["channels"]) if permute else peg.inverse(fam["order"])
    return out
