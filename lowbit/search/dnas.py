"""DNAS (Zhao et al., IJCAI 2021), the numerics: a softmax over each subgroup's candidates
mixes their dequantized weights, a size penalty prices the mixture, a temperature anneals it.

For subgroup ``s`` with logits ``l_s`` over candidates ``c`` (``SearchSpace.candidates()``,
pruned and fp included) at temperature ``T``::

    p_sc = softmax(l_s / T)_c
    W_eff[rows_s] = sum_c p_sc Q_c(W)[rows_s]        Q_c: space.dequantized, once per weight;
                                                     pruned: 0 (weights frozen)
    E[B] = sum_s sum_c p_sc B_sc                     B: cost.total_bytes (real stored bytes)
    dE[B]/dl_sc = p_sc (B_sc - sum_c' p_sc' B_sc') / T
    T(t) = T0 (T1 / T0)^(t / (steps - 1))            exponential decay, T(0) = T0, T(end) = T1
    loss = task(W_eff) + lambda * E[B] / B_fp32       B_fp32: 4 bytes per searched element

With the float weights fine-tuned as well (``W`` moves from ``W0``), each quantizer is taken
straight through: ``Q_c(W) ~ Q_c(W0) + [c not pruned] (W - W0)``.

Discretisation (``discretise``): the argmax per subgroup; where the members of a tie (pruned
together or not at all) disagree, the tie takes the likelier of "all pruned" (``prod_s
p_s(pruned)``) and "none pruned" (``prod_s max_{c not pruned} p_sc``), the argmax under the tie.

``bisect_lambda`` finds lambda for a byte budget: geometric steps of ``factor`` from ``start``
until one probe meets the budget and one does not, then geometric bisection, ``probes`` probes
in all; the answer is the probe of most bytes within the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.search.space import Candidate, SearchSpace, dequantized

__all__ = ["bisect_lambda", "candidate_stack", "discretise", "expected_bytes", "mixture",
           "temperature"]


def temperature(step: int, steps: int, start: float, end: float) -> float:
    """``T(step)`` of the module docstring: ``start`` at step 0, ``end`` at ``steps - 1``."""
    if not (start > 0 and end > 0):
        raise ConfigError(f"temperature: start and end must be > 0, got ({start!r}, {end!r})")
    if steps <= 1:
        return float(end)
    return float(start * (end / start) ** (min(max(step, 0), steps - 1) / (steps - 1)))


def candidate_stack(w: torch.Tensor, candidates: Sequence[Candidate], space: SearchSpace,
                    name: str = "weight") -> torch.Tensor:
    """``Q_c(W)`` for every candidate of an [N, K] weight, stacked: float32 [N, C, K]."""
    return torch.stack([dequantized(w, c, space, name) for c in candidates], dim=1)


def mixture(stack: torch.Tensor, probs_rows: torch.Tensor) -> torch.Tensor:
    """``W_eff`` [N, K] from a stack [N, C, K] and each row's candidate probabilities [N, C]."""
    return torch.einsum("nc,nck->nk", probs_rows.to(stack.dtype), stack)


def expected_bytes(logits: torch.Tensor, nbytes: torch.Tensor, temp: float) -> torch.Tensor:
    """``E[B]`` of the module docstring: logits and bytes [S, C], a scalar (differentiable)."""
    return (torch.softmax(logits / temp, dim=-1) * nbytes.to(logits.dtype)).sum()


def discretise(logits: np.ndarray | torch.Tensor, pruned: np.ndarray,
               ties: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """One candidate per subgroup (column indices [S]), ties respected (module docstring).
    ``pruned`` [C] or [S, C]: which columns prune."""
    lg = torch.as_tensor(logits).detach().cpu().double()
    logp = torch.log_softmax(lg, dim=-1).numpy()
    pruned = np.broadcast_to(np.asarray(pruned, bool), logp.shape)
    choice = logp.argmax(1)
    for tie in ties:
        tie = list(tie)
        states = {bool(pruned[s, choice[s]]) for s in tie}
        if len(states) < 2:
            continue
        best_p = [np.where(pruned[s], logp[s], -np.inf).argmax() for s in tie]
        best_k = [np.where(~pruned[s], logp[s], -np.inf).argmax() for s in tie]
        all_pruned = sum(logp[s, c] for s, c in zip(tie, best_p))
        none_pruned = sum(logp[s, c] for s, c in zip(tie, best_k))
        choice[tie] = best_p if all_pruned > none_pruned else best_k
    return choice


def bisect_lambda(probe: Callable[[int, float], Any], budget: int, *, probes: int = 8,
                  start: float = 1e-2, factor: float = 10.0, lowest: float = 1e-6,
                  highest: float = 1e4) -> tuple[Any, float, list[tuple[float, int]]]:
    """Lambda for ``budget`` bytes (module docstring). ``probe(i, lam)`` runs one search and
    returns a result with ``.bytes``. Returns (the best result, its lambda, [(lambda, bytes)]
    of every probe). Stops early on an exact hit, or when the budget holds at ``lowest``.

    Raises:
        ConfigError: no probe met the budget (the message gives the smallest size reached).
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ConfigError(f"probes must be an int >= 1, got {probes!r}")
    if not (start > 0 and factor > 1 and 0 < lowest <= start <= highest):
        raise ConfigError(f"bisect_lambda: need 0 < lowest <= start <= highest and factor > 1, "
                          f"got {lowest}, {start}, {highest}, {factor}")
    history: list[tuple[float, int]] = []
    best, best_lam = None, math.nan
    lo = hi = None                    # lo: over budget (too small); hi: within budget
    lam = start
    for i in range(probes):
        r = probe(i, lam)
        history.append((lam, int(r.bytes)))
        if r.bytes <= budget:
            if best is None or r.bytes > best.bytes or (r.bytes == best.bytes and lam < best_lam):
                best, best_lam = r, lam
            hi = lam if hi is None else min(hi, lam)
            if r.bytes == budget or (lo is None and lam <= lowest):
                break
        else:
            lo = lam if lo is None else max(lo, lam)
            if hi is None and lam >= highest:
                break
        lam = (hi / factor if lo is None else lo * factor if hi is None
               else math.sqrt(lo * hi))
    if best is None:
        smallest = min(b for _, b in history)
        raise ConfigError(f"DNAS met no budget of {budget:,} bytes in {len(history)} probe(s) "
                          f"(lambda {history[0][0]:.3g} to {history[-1][0]:.3g}); the smallest "
                          f"plan reached {smallest:,} bytes (raise the budget, or give more "
                          f"probes / steps)")
    return best, best_lam, history
