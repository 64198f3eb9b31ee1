"""The integer-program baseline: one candidate per subgroup, least total sensitivity, under a
byte budget (a multiple-choice knapsack), solved exactly by HiGHS (``highspy``)::

    minimise    sum_{s,c} S[s,c] x[s,c]
    subject to  sum_c x[s,c] = 1                                    every subgroup s
                sum_{s,c} B[s,c] x[s,c] <= budget                   bytes (lowbit.search.cost)
                sum_{c pruned} x[t0,c] = sum_{c pruned} x[t,c]      every t tied to t0
                x[s,c] in {0, 1};  no variable where S[s,c] is not finite (not offered)

Candidates dominated within their subgroup (another has bytes <= and sensitivity <=, one of
them strictly) are dropped before the solve, unless pruned (ties need them): the optimum is
unchanged. Sensitivities are scaled to a maximum of 1 for the solver (HiGHS' absolute gap is
1e-6) and reported unscaled; gaps are 0 and tolerances 1e-9, so the optimum is exact to about
1e-9 of the largest sensitivity (brute force agrees: tests/search/test_ilp.py). A budget below the smallest reachable size raises a ConfigError
giving that size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from lowbit.errors import ConfigError, LowbitError

__all__ = ["Budget", "Solution", "solve"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """A size budget: ``bytes`` (total stored bytes of the searched weights), or ``avg_bits``
    (stored bits per weight element, scales and zero points included). Exactly one."""

    bytes: int | None = None
    avg_bits: float | None = None

    def __post_init__(self) -> None:
        if (self.bytes is None) == (self.avg_bits is None):
            raise ConfigError(f"Budget: give exactly one of bytes= or avg_bits=, got "
                              f"bytes={self.bytes!r}, avg_bits={self.avg_bits!r}")
        if self.bytes is not None and (isinstance(self.bytes, bool) or not isinstance(
                self.bytes, (int, np.integer)) or self.bytes < 0):
            raise ConfigError(f"Budget.bytes: must be an int >= 0, got {self.bytes!r}")
        if self.avg_bits is not None and not (isinstance(self.avg_bits, (int, float))
                                              and 0 <= self.avg_bits < float("inf")):
            raise ConfigError(f"Budget.avg_bits: must be a finite number >= 0, got "
                              f"{self.avg_bits!r}")

    def to_bytes(self, elements: int) -> int:
        """The budget in bytes for ``elements`` weight elements (avg_bits rounded down)."""
        if self.bytes is not None:
            return int(self.bytes)
        return int(self.avg_bits * elements // 8)


@dataclasses.dataclass(frozen=True)
class Solution:
    """``choice[s]``: the column chosen for subgroup s; its total sensitivity and bytes;
    ``seconds``: the HiGHS solve alone; ``variables``: binaries after pruning dominated ones."""

    choice: np.ndarray
    sensitivity: float
    bytes: int
    seconds: float
    variables: int


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS prints its banner from C++ when the first ``Highs()`` is built: keep it off
    stdout (fd 1) for that moment."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _kept(sens: np.ndarray, nbytes: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """Mask [S, C] of the finite, non-dominated (or pruned) candidates."""
    ok = np.isfinite(sens)
    keep = ok.copy()
    for s in range(sens.shape[0]):
        cols = np.flatnonzero(ok[s])
        for c in cols:
            if pruned[s, c]:
                continue
            le = (nbytes[s, cols] <= nbytes[s, c]) & (sens[s, cols] <= sens[s, c])
            lt = (nbytes[s, cols] < nbytes[s, c]) | (sens[s, cols] < sens[s, c])
            # dominated strictly, or an equal twin earlier in the row
            if (le & lt).any() or (le & ~lt & (cols < c)).any():
                keep[s, c] = False
    return keep


def solve(sensitivity: np.ndarray, nbytes: np.ndarray, budget: int, *,
          pruned: np.ndarray | None = None, ties: Sequence[Sequence[int]] = (),
          time_limit: float = 60.0) -> Solution:
    """The integer program of the module docstring on plain arrays [S, C] (``pruned``: which
    columns prune; ``ties``: lists of subgroup indices that prune together)."""
    try:
        import highspy
    except ImportError:
        raise ConfigError("the integer program needs HiGHS: pip install highspy (or "
                          "lowbit[search])") from None

    sens, nb = np.asarray(sensitivity, dtype=float), np.asarray(nbytes, dtype=np.int64)
    n_sub = sens.shape[0]
    pruned = np.zeros(sens.shape, bool) if pruned is None else np.asarray(pruned, bool)
    if nb.shape != sens.shape or pruned.shape != sens.shape:
        raise ConfigError(f"solve: sensitivity {sens.shape}, bytes {nb.shape} and pruned "
                          f"{pruned.shape} must have one shape [subgroups, candidates]")
    if (np.isfinite(sens) & (sens < 0)).any() or (nb < 0).any():
        raise ConfigError("solve: sensitivities and bytes must be >= 0")
    empty = np.flatnonzero(~np.isfinite(sens).any(1))
    if empty.size:
        raise ConfigError(f"solve: subgroup(s) {empty.tolist()} have no candidate")
    _check_budget(sens, nb, pruned, ties, budget)

    keep = _kept(sens, nb, pruned)
    cols = [(s, c) for s in range(n_sub) for c in np.flatnonzero(keep[s])]
    var = {sc: i for i, sc in enumerate(cols)}
    top = max(float(sens[keep].max()), 1e-300)
    rows: list[tuple[list[int], list[float], float, float]] = []
    for s in range(n_sub):
        idx = [var[s, c] for c in np.flatnonzero(keep[s])]
        rows.append((idx, [1.0] * len(idx), 1.0, 1.0))
    rows.append((list(range(len(cols))), [float(nb[s, c]) for s, c in cols], -np.inf,
                 float(budget)))
    for tie in ties:
        t0 = tie[0]
        for t in tie[1:]:
            idx = [var[t, c] for c in np.flatnonzero(keep[t] & pruned[t])]
            idx0 = [var[t0, c] for c in np.flatnonzero(keep[t0] & pruned[t0])]
            rows.append((idx + idx0, [1.0] * len(idx) + [-1.0] * len(idx0), 0.0, 0.0))

    with _quiet_stdout():
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    for tol in ("mip_feasibility_tolerance", "primal_feasibility_tolerance",
                "dual_feasibility_tolerance"):  # defaults 1e-6/1e-7 miss optima by ~1e-7
        h.setOptionValue(tol, 1e-9)
    h.setOptionValue("time_limit", float(time_limit))
    n = len(cols)
    h.addVars(n, np.zeros(n), np.ones(n))
    h.changeColsCost(n, np.arange(n, dtype=np.int32),
                     np.array([sens[s, c] / top for s, c in cols]))
    h.changeColsIntegrality(n, np.arange(n, dtype=np.int32),
                            np.array([highspy.HighsVarType.kInteger] * n))
    for idx, val, lo, hi in rows:
        h.addRow(lo, hi, len(idx), np.array(idx, dtype=np.int32), np.array(val))
    t = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - t
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise LowbitError(f"HiGHS did not prove an optimum: {h.modelStatusToString(status)} "
                          f"after {seconds:.2f} s ({n} binaries)")
    x = np.asarray(h.getSolution().col_value)
    choice = np.full(n_sub, -1)
    for i, (s, c) in enumerate(cols):
        if x[i] > 0.5:
            choice[s] = c
    picked = np.arange(n_sub)
    total = int(nb[picked, choice].sum())
    if (choice < 0).any() or total > budget:
        raise LowbitError(f"HiGHS returned an invalid assignment ({total} bytes for a budget "
                          f"of {budget})")
    return Solution(choice, float(sens[picked, choice].sum()), total, seconds, n)


def _check_budget(sens: np.ndarray, nb: np.ndarray, pruned: np.ndarray,
                  ties: Sequence[Sequence[int]], budget: int) -> None:
    """ConfigError with the smallest feasible size when ``budget`` is below it."""
    big = np.iinfo(np.int64).max // 4
    cost = np.where(np.isfinite(sens), nb, big)
    least = cost.min(1)
    tied = {t for tie in ties for t in tie}
    smallest = sum(int(least[s]) for s in range(len(least)) if s not in tied)
    for tie in ties:  # all pruned, or none: the cheaper of the two
        pr = [int(np.where(pruned[t], cost[t], big).min()) for t in tie]
        un = [int(np.where(~pruned[t], cost[t], big).min()) for t in tie]
        smallest += min(sum(pr), sum(un))
    if budget < smallest:
        raise ConfigError(f"budget of {budget} bytes is infeasible: the smallest choice "
                          f"takes {smallest} bytes (raise the budget to at least that)")
