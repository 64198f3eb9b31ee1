"""lowbit.search.ilp: the HiGHS optimum equals brute force; budgets, ties, infeasibility."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lowbit.errors import ConfigError
from lowbit.search import Budget, solve

pytest.importorskip("highspy")


def _brute(sens, nb, budget, pruned=None, ties=()):
    best = (np.inf, None)
    n_sub, n_cand = sens.shape
    for choice in itertools.product(range(n_cand), repeat=n_sub):
        rows = np.arange(n_sub)
        if not np.isfinite(sens[rows, choice]).all() or nb[rows, choice].sum() > budget:
            continue
        if any(len({bool(pruned[t, choice[t]]) for t in tie}) > 1 for tie in ties):
            continue
        best = min(best, (sens[rows, choice].sum(), choice), key=lambda x: x[0])
    return best


def _instance(rng, n_sub, n_cand, with_pruned=True):
    """Random sensitivities falling with bytes (as more bits cost more and lose less), with
    some unavailable candidates, and column 0 = pruned (0 bytes) when asked."""
    nb = np.sort(rng.integers(1, 200, (n_sub, n_cand)), axis=1)
    sens = np.sort(rng.random((n_sub, n_cand)) * rng.choice([1e-6, 1.0, 1e3], (n_sub, 1)),
                   axis=1)[:, ::-1].copy()
    sens[rng.random(sens.shape) < 0.15] = np.inf
    sens[:, -1] = np.minimum(sens[:, -1], 1e-3)       # one candidate always available
    pruned = np.zeros(sens.shape, bool)
    if with_pruned:
        nb[:, 0], pruned[:, 0] = 0, True
        sens[:, 0] = sens[:, 1:][np.isfinite(sens[:, 1:])].max() * 2 + rng.random(n_sub)
    return sens, nb, pruned


@pytest.mark.parametrize("seed", range(12))
def test_optimum_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    sens, nb, pruned = _instance(rng, int(rng.integers(3, 6)), int(rng.integers(2, 5)))
    ties = [[0, 1]] if seed % 2 else []
    lo = int(nb.min(1).sum())
    budget = int(rng.integers(lo, nb.max(1).sum() + 1))
    want, _ = _brute(sens, nb, budget, pruned, ties)
    sol = solve(sens, nb, budget, pruned=pruned, ties=ties)
    assert sol.sensitivity == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert sol.bytes <= budget
    rows = np.arange(len(sol.choice))
    assert sol.bytes == nb[rows, sol.choice].sum()
    assert sol.sensitivity == pytest.approx(sens[rows, sol.choice].sum(), rel=1e-12)


def test_ties_prune_together():
    # subgroup 0 is cheap to prune, 1 is not: tied, both stay unpruned under a loose budget
    sens = np.array([[0.1, 1.0, 0.0], [9.0, 1.0, 0.0]])
    nb = np.array([[0, 10, 40], [0, 10, 40]])
    pruned = np.array([[True, False, False]] * 2)
    free = solve(sens, nb, 50, pruned=pruned)
    assert list(free.choice) == [0, 2]
    tied = solve(sens, nb, 50, pruned=pruned, ties=[[0, 1]])
    assert list(tied.choice) in ([1, 2], [2, 1])


def test_budget_met_exactly_at_the_smallest_size_and_everything_fp_at_the_largest():
    rng = np.random.default_rng(7)
    nb = np.sort(rng.integers(1, 200, (5, 4)), axis=1)
    sens = np.sort(rng.random((5, 4)), axis=1)[:, ::-1].copy()
    sens[:, -1] = 0.0
    smallest, largest = int(nb.min(1).sum()), int(nb.max(1).sum())
    sol = solve(sens, nb, smallest)
    assert sol.bytes == smallest
    top = solve(sens, nb, largest)
    assert top.sensitivity == 0.0 and top.bytes <= largest


def test_infeasible_budget_names_the_smallest_feasible_size():
    sens = np.array([[1.0, 0.0], [2.0, 0.0]])
    nb = np.array([[10, 30], [20, 30]])
    with pytest.raises(ConfigError, match="smallest choice takes 30 bytes"):
        solve(sens, nb, 29)
    assert solve(sens, nb, 30).bytes == 30
    # subgroup 0 prunes to 0 bytes alone, not when tied to 1, which cannot be pruned
    pruned = np.array([[True, False], [False, False]])
    nb = np.array([[0, 40], [20, 30]])
    assert solve(sens, nb, 20, pruned=pruned).bytes == 20
    with pytest.raises(ConfigError, match="smallest choice takes 60 bytes"):
        solve(sens, nb, 59, pruned=pruned, ties=[[0, 1]])
    assert solve(sens, nb, 60, pruned=pruned, ties=[[0, 1]]).bytes == 60


def test_unscaled_tiny_sensitivities_are_still_solved_exactly():
    """Sensitivities of 1e-12 (a well-trained small layer) would all sit under HiGHS'
    absolute gap without the rescaling."""
    rng = np.random.default_rng(3)
    sens, nb, pruned = _instance(rng, 5, 4)
    sens = sens * 1e-12
    budget = int(nb.min(1).sum() + 100)
    want, _ = _brute(sens, nb, budget, pruned)
    assert solve(sens, nb, budget, pruned=pruned).sensitivity == pytest.approx(want, rel=1e-9)


def test_budget_config():
    assert Budget(avg_bits=4).to_bytes(1000) == 500
    assert Budget(bytes=123).to_bytes(10) == 123
    with pytest.raises(ConfigError, match="exactly one"):
        Budget()
    with pytest.raises(ConfigError, match="exactly one"):
        Budget(bytes=1, avg_bits=2.0)
    with pytest.raises(ConfigError, match="Budget.avg_bits"):
        Budget(avg_bits=float("nan"))
    with pytest.raises(ConfigError, match="no candidate"):
        solve(np.array([[np.inf]]), np.array([[1]]), 10)
