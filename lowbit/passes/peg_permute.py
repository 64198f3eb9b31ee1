"""PEG's range-based permutation folded into the parameters of one channel family, written once
over a ``GraphView`` (FX and ONNX ``PegPermute`` both run it).

Given the family's channel order ``p`` (``order``: ``lowbit.quant.peg.shared_order`` over the
ranges of its permuted PEG sites) and the parameters its discovery found (``FoldPlan``), make
``x' = x[..., p]`` the family's channel order, exactly (indexing moves values)::

    rows      producer linear      W' = W[p, :]   ([out, in]; [in, out]: W[:, p])
    vectors   bias, gain, beta, channel parameter, embedding table columns   v' = v[..., p]
    columns   consumer linear      W' = W[:, p]   ([out, in]; [in, out]: W[p, :])

A parameter is permuted once however many names it has (``GraphView.aliases``: a table tied
between an embedding and the LM head of one family takes ``E[:, p]`` once, for both ends).
The family and its plan come from ``lowbit.passes.peg_family`` (``discover``, ``fold_plan``),
also written once. What stays IR-specific: where the calibrated ranges live, and inserting
gathers / copies (new ops and parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from lowbit.passes.view.base import GraphView
from lowbit.quant import peg

__all__ = ["FoldPlan", "fold", "order"]


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """The parameters of one family, by name (the IR's own, ``GraphView.param``), and how each
    takes the permutation (module docstring); layouts are "out_in" | "in_out"."""

    rows: tuple[tuple[str, str], ...] = ()
    vectors: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()


def order(ranges: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """(p, argsort(p)): the family's channel order from its permuted PEG sites' ranges."""
    p = peg.shared_order(list(ranges))
    return p, peg.inverse(p)


def fold(view: GraphView, plan: FoldPlan, p: torch.Tensor) -> int:
    """Permute every parameter of ``plan`` by ``p`` in ``view``'s graph; returns how many
    parameters changed (a tensor with several names counts once)."""
    done: set[str] = set()

    def put(name: str, fn) -> int:
        if name in done:
            return 0
        done.update(view.aliases(name), (name,))
        view.set_param(name, fn(view.param(name)))
        return 1

    with torch.no_grad():
        touched = sum(put(w, lambda t, lay=layout: peg.permute_out(t, p, lay))
                      for w, layout in plan.rows)
        touched += sum(put(v, lambda t: peg.permute_vector(t, p)) for v in plan.vectors)
        touched += sum(put(w, lambda t, lay=layout: peg.permute_in(t, p, lay))
                       for w, layout in plan.columns)
    return touched
