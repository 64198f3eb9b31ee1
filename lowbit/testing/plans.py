"""``cycled_plan``: a ``PrecisionPlan`` built by rule, for tests of passes that apply plans.

    plan = cycled_plan(graph, pruned=("block0.kv1", "block1.ffn0"),
                       choices=(("bcq", 3), ("uniform", 8), ("fp", 32)))

Subgroups from ``lowbit.passes.subgroups.list_subgroups`` (an FX GraphModule or an onnx_ir
Model); those whose tie (``block0.kv1``, ``block0.ffn2``) or linear name is in ``pruned`` are
pruned, the others take ``choices`` in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lowbit.passes.subgroups import list_subgroups
from lowbit.search import PerHead, PerNeurons, PlanEntry, PrecisionPlan, SearchSpace

__all__ = ["cycled_plan"]


def cycled_plan(graph: Any, pruned: Sequence[str] = (),
                choices: Sequence[tuple[str, int]] = (("fp", 32),),
                space: SearchSpace | None = None, granularity: Any = None) -> PrecisionPlan:
    """The plan of the module docstring; ``space`` defaults to per-row scales and 2 BCQ
    iterations, ``granularity`` to ``(PerHead(), PerNeurons(32))``."""
    space = SearchSpace(group=None, bcq_iters=2) if space is None else space
    entries, i = [], 0
    for s in list_subgroups(graph, granularity or (PerHead(), PerNeurons(32))):
        if s.tie in pruned or s.linear in pruned:
            code, bits = "pruned", 0
        else:
            code, bits = choices[i % len(choices)]
            i += 1
        entries.append(PlanEntry(s.linear, s.role, s.rows, s.in_features, s.out_features,
                                 code, bits, code == "pruned", s.tie))
    return PrecisionPlan(tuple(entries), space)
