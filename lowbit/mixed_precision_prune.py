"""The measured cost of pruning for the mixed-precision search (``prune_cost="measured"`` of
``lowbit.mixed_precision.sensitivity_table``; the math is ``lowbit.search.sensitivity``'s).

    subgroups = join_dead_linears(gm, subgroups)            # o / down join a tie that kills them
    links = plan_links(gm, subgroups)                       # o / down narrow as feeders prune
    units = pruning_units(subgroups)                        # ties, and untied subgroups
    edits = [removal(gm, subgroups, u, space) for u in units]
    deltas = removal_losses(gm, edits, batches, run, loss)  # [units, batches]

A unit is removed as ``apply_precision`` removes it, in float: ``lowbit.passes.precision_plan``
reads a plan that prunes the unit alone (every other subgroup of the linears it touches fp32)
and says what goes, and each removal is an exact float equivalent of the structural one (that
module's docstring)::

    heads of an attention     o's input columns of the pruned q heads zeroed
    neurons of an FFN         down's input columns of the pruned neurons zeroed
    a linear removed whole    its weight zeroed (its output becomes its bias)

A unit the graph cannot remove (a plan pruning it alone does not fit: q pruned whole without k
and v, say) is measured with its own rows zeroed, what the Taylor score prices, and reported as
not structural. The edits are made in place under ``no_grad`` and undone after every forward
(the saved values copied back): the graph ends as it began, bit for bit. One forward per unit
and batch, batches outermost (one reference output held at a time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx

from lowbit.errors import ConfigError
from lowbit.passes.precision_plan import match_plan
from lowbit.passes.spot import find_transformer
from lowbit.progress import bar as progress_bar
from lowbit.search.plan import Link, PlanEntry, PrecisionPlan
from lowbit.search.space import SearchSpace, Subgroup

__all__ = ["Removal", "UnitCost", "join_dead_linears", "plan_links", "pruning_units",
           "removal", "removal_losses"]

Index = tuple[slice, ...]


@dataclasses.dataclass(frozen=True)
class Removal:
    """What zeroing removes one unit: ``(parameter, index)`` pairs; ``structural``: the graph
    can remove the unit (else its rows are zeroed, module docstring)."""

    zero: tuple[tuple[str, Index], ...]
    structural: bool


@dataclasses.dataclass(frozen=True)
class UnitCost:
    """One measured unit: its ``subgroups`` (indices), the price ``cost`` (``mean`` clipped at
    0), ``mean`` and its standard error ``se`` over batches, ``taylor`` (the sum of its
    subgroups' Taylor scores, for comparison), ``structural`` (``Removal``)."""

    subgroups: tuple[int, ...]
    cost: float
    mean: float
    se: float
    taylor: float
    structural: bool


def join_dead_linears(graph: fx.GraphModule, subgroups: Sequence[Subgroup]) -> list[Subgroup]:
    """``subgroups`` with o joining the tie that holds every head of its attention (one kv
    head, as Gemma-3-270M has) and down the tie that holds every neuron of its FFN: pruning
    that tie leaves them with no input, and pruning them removes the same thing, so they go
    together (one unit, priced and counted once)."""
    out = list(subgroups)
    at = {s.linear: [i for i, t in enumerate(out) if t.linear == s.linear] for s in out}
    for blk in find_transformer(graph).blocks:
        a, f = blk.attn, blk.ffn
        pairs = [((a.q, a.k, a.v), a.o)] if a is not None else []
        if f is not None:
            pairs.append(((f.up, f.gate), f.down))
        for feeders, sink in pairs:
            refs = [r for r in feeders if r is not None]
            if sink is None or not refs or any(r.name not in at for r in refs):
                continue
            ties = {out[i].tie for r in refs for i in at[r.name]}
            sink_at = at.get(sink.name, [])
            if len(ties) == 1 and None not in ties and len(sink_at) == 1 \
                    and out[sink_at[0]].tie is None:
                out[sink_at[0]] = dataclasses.replace(out[sink_at[0]], tie=ties.pop())
    return out


def plan_links(graph: fx.GraphModule, subgroups: Sequence[Subgroup]) -> tuple[Link, ...]:
    """One ``lowbit.search.Link`` per o / FFN-out whose input columns pruning removes, as
    ``apply_precision`` removes them: o and the head ties of q / k / v (every q, k, v row in a
    tie, the same ties in each; one feeder per tie, ``head_dim`` x the q heads of the tie
    columns each), down and the neuron-block ties of up (and gate), down and a whole, untied
    up of an FFN without gate (pruning it removes down). Other layouts get no link (they
    cannot prune structurally, or prune o / down only whole)."""
    by: dict[str, list[Subgroup]] = {}
    for sg in subgroups:
        by.setdefault(sg.linear, []).append(sg)
    out: list[Link] = []

    def add(sink, feeders: list[Subgroup], reads: list, width: int | None = None) -> None:
        if sink is None or sink.name not in by or not feeders:
            return
        k = by[sink.name][0].in_features
        if k % len(feeders) == 0 and width in (None, k // len(feeders)):
            out.append(Link(sink.name, tuple(f.name for f in feeders), k // len(feeders),
                            tuple(r.name for r in reads if r is not None and r.name in by)))

    def first_per_tie(sgs: list[Subgroup]) -> list[Subgroup] | None:
        if any(sg.tie is None for sg in sgs):
            return None
        seen: dict[str, Subgroup] = {}
        for sg in sgs:
            seen.setdefault(sg.tie, sg)
        return list(seen.values())

    for blk in find_transformer(graph).blocks:
        a, f = blk.attn, blk.ffn
        if a is not None and all(r is not None and r.name in by for r in (a.q, a.k, a.v)):
            ties = [{sg.tie for sg in by[r.name]} for r in (a.q, a.k, a.v)]
            feeders = first_per_tie(by[a.q.name])
            if feeders and None not in ties[0] and ties[0] == ties[1] == ties[2]:
                add(a.o, feeders, [a.q, a.k, a.v])
        if f is not None and f.up is not None and f.up.name in by:
            ups = by[f.up.name]
            feeders = first_per_tie(ups)
            widths = {sg.rows[1] - sg.rows[0] for sg in ups}
            if feeders and len(widths) == 1 and len(feeders) == len(ups):
                add(f.down, feeders, [f.up, f.gate], widths.pop())
            elif f.gate is None and len(ups) == 1 and ups[0].tie is None:
                add(f.down, ups, [f.up])
    return tuple(out)


def pruning_units(subgroups: Sequence[Subgroup]) -> list[list[int]]:
    """Subgroup indices per unit: one per tie (first appearance order), one per untied
    subgroup."""
    units: list[list[int]] = []
    by_tie: dict[str, list[int]] = {}
    for i, s in enumerate(subgroups):
        if s.tie is None:
            units.append([i])
        elif s.tie in by_tie:
            by_tie[s.tie].append(i)
        else:
            by_tie[s.tie] = [i]
            units.append(by_tie[s.tie])
    return units


def _cols(layout: str, a: int, b: int) -> Index:
    """Input columns ``a:b`` of a weight held as ``layout``."""
    return (slice(None), slice(a, b)) if layout == "out_in" else (slice(a, b), slice(None))


def _runs(idx: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices as ``[a, b)`` runs."""
    out: list[tuple[int, int]] = []
    for j in sorted(idx):
        if out and out[-1][1] == j:
            out[-1] = (out[-1][0], j + 1)
        else:
            out.append((j, j + 1))
    return out


def removal(graph: fx.GraphModule, subgroups: Sequence[Subgroup], unit: Sequence[int],
            space: SearchSpace) -> Removal:
    """The float edit that removes ``unit`` (module docstring)."""
    pruned = set(unit)
    linears = {subgroups[i].linear for i in unit}
    entries = tuple(
        PlanEntry(s.linear, s.role, s.rows, s.in_features, s.out_features,
                  "pruned" if i in pruned else "fp", 0 if i in pruned else 32, i in pruned,
                  s.tie)
        for i, s in enumerate(subgroups) if s.linear in linears)
    try:
        match = match_plan(graph, PrecisionPlan(entries, space))
    except ConfigError:
        match = None
    zero: list[tuple[str, Index]] = []
    if match is not None:
        for hp in match.heads:
            gone = [j for j in range(hp.attn.num_heads) if j not in hp.keep_q]
            o = hp.attn.o
            zero += [(o.weight, _cols(o.weight_layout, a * hp.head_dim, b * hp.head_dim))
                     for a, b in _runs(gone)]
        for np_ in match.neurons:
            gone = [j for j in range(np_.ffn.up.out_features) if j not in np_.keep]
            d = np_.ffn.down
            zero += [(d.weight, _cols(d.weight_layout, a, b)) for a, b in _runs(gone)]
        zero += [(ref.weight, (slice(None),)) for ref in match.removed]
    if zero:
        return Removal(tuple(zero), True)
    rows = [(s.weight, (slice(*s.rows), slice(None)) if s.layout == "out_in"
             else (slice(None), slice(*s.rows))) for s in (subgroups[i] for i in unit)]
    return Removal(tuple(rows), False)


def removal_losses(gm: torch.nn.Module, removals: Sequence[Removal], batches: Sequence[Any],
                   run: Callable[[torch.nn.Module, Any], Any],
                   loss: Callable[[Any, Any, Any], float], *, progress: bool = True
                   ) -> np.ndarray:
    """``loss(edited outputs, reference outputs, batch) - loss(reference, reference, batch)``
    per removal and batch: float64 [len(removals), len(batches)]."""
    params = dict(gm.named_parameters())
    missing = sorted({p for r in removals for p, _ in r.zero if p not in params})
    if missing:
        raise ConfigError(f"pruning cost: {missing[:3]} are not parameters of the graph")
    deltas = np.zeros((len(removals), len(batches)))
    with torch.no_grad(), progress_bar(total=len(removals) * len(batches),
                                       desc="pruning cost: removals", unit="forward",
                                       enabled=progress) as bar:
        for b, batch in enumerate(batches):
            ref = run(gm, batch)
            base = loss(ref, ref, batch)
            for u, rem in enumerate(removals):
                saved = [(params[p], idx, params[p][idx].clone()) for p, idx in rem.zero]
                try:
                    for p, idx, _ in saved:
                        p[idx] = 0
                    deltas[u, b] = loss(run(gm, batch), ref, batch) - base
                finally:
                    for p, idx, v in saved:
                        p[idx] = v
                bar.update()
            del ref
    return deltas
