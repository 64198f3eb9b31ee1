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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lowbit.errors import CalibrationError, ConfigError
from lowbit.search.space import Candidate, SearchSpace, dequantized

__all__ = ["FisherAccumulator", "block_sensitivity", "candidate_scores"]


class FisherAccumulator:
    """Running mean of squared gradients per weight name (float32, the weight's shape)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0

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
