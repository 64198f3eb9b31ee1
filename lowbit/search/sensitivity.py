"""Sensitivity of a subgroup to a candidate: a second-order Taylor estimate of the loss increase.

Around trained weights the first-order term of ``L(W + dW) - L(W)`` is taken as zero and the
Hessian as its diagonal Fisher approximation ``F = E[g^2]`` (``g = dL/dW`` on a calibration
batch), as ModelOpt's ``auto_quantize`` and HAWQ do::

    S(rows, c) = 0.5 * sum_{rows, all k} F * (W - Q_c(W))^2

``Q_c`` is the candidate's quantize-dequantize (``lowbit.search.space.dequantized``): "fp" and
any candidate that reproduces W score 0; pruning (``Q = 0``) scores ``0.5 * sum F W^2``, the
estimate for removing the rows. Scores of different subgroups add (the search's assumption).

``F`` is the mean over batches of the squared batch gradient (``FisherAccumulator``); a batch
whose gradient holds NaN/inf stops with a CalibrationError naming the batch and the weight.
Without labels the gradient is the one of the output-distillation loss in expectation: for
``L = 0.5 * mean((f(W') - f(W))^2)`` the Hessian at ``W`` is ``J^T J / n``, and
``g = J^T r / sqrt(n)`` with ``r ~ N(0, I)`` has ``E[g g^T] = J^T J / n``, so squared
gradients of ``sum(r * f) / sqrt(n)`` (fresh ``r`` per batch) estimate its diagonal.

**Units.** The search adds scores of different candidates, and a measured cost (below) to
them, so ``F`` must be the Hessian estimate of the loss ``L`` itself. A loss given as per-term
values ``l_t`` (``L = mean_t l_t``: per token, per example) is differentiated with random signs
``s_t`` in {-1, +1} drawn per batch (``fisher_objective``)::

    g = grad sum_t s_t l_t / sqrt(T),    E[g g^T] = (1/T) sum_t grad l_t grad l_t^T

the empirical Fisher of ``L``. A scalar loss is one term: for a batch mean of T terms
``(grad L)^2 = (mean_t grad l_t)^2`` is about 1/T of that (the cross terms average out), an
estimate fine for ranking candidates but T times too small next to a measured loss increase.

**Pruning, measured.** Removing a head or a block of neurons is no small perturbation, and
``0.5 sum F W^2`` can be off either way by several times. ``prune_cost="measured"``
(``lowbit.mixed_precision.sensitivity_table``) instead removes each pruning unit ``u`` (the
subgroups of one tie, or one untied subgroup) from the float model, as ``apply_precision``
would, and measures on calibration batches ``b``::

    D_b(u) = L_b(W without u) - L_b(W)
    P(u) = max(0, mean_b D_b(u) + z * se(u))       se: the standard error of that mean

with ``L_b`` the loss (its mean over terms) or, without one, the distillation error
``0.5 sum_o mean((f_o(W') - f_o(W))^2)`` whose Hessian the surrogate's ``F`` estimates
(``distillation_error``). ``P(u)`` is split over u's subgroups by elements (``spread``; they
prune together, only the sum counts). A removal that lowers the calibration loss is priced 0.
``z`` (``prune_margin``, default 1) prices a unit one standard error above its mean: the
integer program picks the units that look cheapest, and with a few batches some look cheaper
than they are (the winner's curse); the margin charges that uncertainty. (Pruning many units
together also costs more than the sum of their single costs; the sum, like every Taylor score,
assumes they add.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree

from lowbit.errors import CalibrationError, ConfigError
from lowbit.search.space import Candidate, SearchSpace, dequantized

__all__ = ["FisherAccumulator", "block_sensitivity", "candidate_scores", "distillation_error",
           "fisher_objective", "measured_costs", "measured_price", "spread"]


class FisherAccumulator:
    """Running mean of squared gradients per weight name (float32, the weight's shape)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.terms = 0      # loss terms seen (the caller counts them: fisher_objective)

    def add(self, grads: dict[str, torch.Tensor], batch: int) -> None:
        """Add one batch's gradients; ``batch`` (0-based) is named in errors."""
        for name, g in grads.items():
            if g is None:
                raise CalibrationError(f"batch {batch}: no gradient reached weight {name!r} "
                                       f"(is it used by the graph's outputs / the loss?)")
            g = g.detach().to(torch.float32)
            if not torch.isfinite(g).all():
                raise CalibrationError(f"batch {batch}: the gradient of weight {name!r} holds "
                                       f"NaN or inf (check that batch and the loss)")
            sq = g * g
            if name in self.sums:
                self.sums[name] += sq
            else:
                self.sums[name] = sq.clone()
        self.batches += 1

    def fisher(self, name: str) -> torch.Tensor:
        if self.batches == 0:
            raise CalibrationError("calibration data is empty: the sensitivity needs at least "
                                   "one batch")
        return self.sums[name] / self.batches


def block_sensitivity(w: torch.Tensor, fisher: torch.Tensor, w_hat: torch.Tensor,
                      blocks: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``0.5 * sum F (W - W_hat)^2`` over each row block ``(a, b)``: float64 [len(blocks)]."""
    if w.shape != fisher.shape or w.shape != w_hat.shape:
        raise ConfigError(f"block_sensitivity: shapes differ: W {tuple(w.shape)}, F "
                          f"{tuple(fisher.shape)}, W_hat {tuple(w_hat.shape)}")
    per_row = (fisher.double() * (w.double() - w_hat.double()) ** 2).sum(-1)
    return torch.stack([0.5 * per_row[a:b].sum() for a, b in blocks])


def candidate_scores(w: torch.Tensor, fisher: torch.Tensor, blocks: Sequence[tuple[int, int]],
                     candidates: Sequence[Candidate], space: SearchSpace, name: str = "weight"
                     ) -> np.ndarray:
    """Sensitivity [len(blocks), len(candidates)] of one [N, K] weight's row blocks.

    Each candidate quantizes the whole weight once; every format keeps its scales per row,
    so each block's rows come out as if the block were quantized alone."""
    w = w.detach().to(torch.float32)
    out = np.empty((len(blocks), len(candidates)))
    for j, cand in enumerate(candidates):
        w_hat = dequantized(w, cand, space, name)
        out[:, j] = block_sensitivity(w, fisher, w_hat, blocks).numpy()
    return out


def fisher_objective(loss: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The scalar whose squared gradient estimates the Fisher of ``loss`` (module docstring,
    units): a scalar as it is; per-term values as ``sum_t s_t l_t / sqrt(T)``, fresh random
    signs from ``gen``."""
    if loss.ndim == 0:
        return loss
    terms = loss.reshape(-1)
    if terms.numel() == 0:
        raise ConfigError("the loss function returned no terms (an empty tensor)")
    signs = torch.randint(0, 2, terms.shape, generator=gen).to(terms.device, terms.dtype) * 2 - 1
    return (signs * terms).sum() / terms.numel() ** 0.5


def distillation_error(outputs: Any, reference: Any) -> float:
    """``0.5 sum_o mean((o - r)^2)`` over the float tensors of two output pytrees (float64)."""
    total = 0.0
    for o, r in zip(_pytree.tree_leaves(outputs), _pytree.tree_leaves(reference), strict=True):
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            total += 0.5 * float(((o.double() - r.double()) ** 2).mean())
    return total


def measured_price(mean: np.ndarray | float, se: np.ndarray | float, margin: float
                   ) -> np.ndarray:
    """``P = max(0, mean + margin * se)`` (module docstring)."""
    if not (isinstance(margin, (int, float)) and not isinstance(margin, bool)
            and 0 <= margin < float("inf")):
        raise ConfigError(f"prune_margin must be a finite number >= 0, got {margin!r}")
    return np.maximum(np.asarray(mean, dtype=np.float64) + margin * np.asarray(se), 0.0)


def measured_costs(deltas: np.ndarray, margin: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From loss increases [units, batches]: ``(P, mean, se)`` per unit: ``measured_price``,
    the mean over batches and its standard error (0 for one batch)."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0:
        raise CalibrationError("the measured pruning cost needs at least one batch")
    if not np.isfinite(d).all():
        u, b = np.argwhere(~np.isfinite(d))[0]
        raise CalibrationError(f"batch {b}: the loss with pruning unit {u} removed is NaN or "
                               f"inf")
    mean = d.mean(1)
    se = d.std(1, ddof=1) / np.sqrt(d.shape[1]) if d.shape[1] > 1 else np.zeros(len(d))
    return measured_price(mean, se, margin), mean, se


def spread(cost: float, elements: Sequence[int]) -> np.ndarray:
    """``cost`` split over subgroups in proportion to their elements (sums to ``cost``)."""
    e = np.asarray(elements, dtype=np.float64)
    if e.ndim != 1 or not len(e) or (e <= 0).any():
        raise ConfigError(f"spread: need positive element counts, got {list(elements)}")
    return cost * e / e.sum()
