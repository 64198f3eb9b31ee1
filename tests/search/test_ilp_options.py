"""lowbit.search.ilp: shared input options and the latency row against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lowbit.errors import ConfigError
from lowbit.search import solve
from lowbit.search.ilp import Narrowing, exact_bytes, exact_latency

pytest.importorskip("highspy")


def _feasible(choice, nb, lat, option, pruned, budget, lat_budget, shared, narrowings):
    if exact_bytes(choice, nb, pruned, narrowings) > budget:
        return False
    if lat is not None and exact_latency(choice, lat, pruned, narrowings) > lat_budget + 1e-12:
        return False
    for group in shared:
        opts = {int(option[s, choice[s]]) for s in group if option[s, choice[s]] >= 0}
        if len(opts) > 1:
            return False
    return True


def _brute(sens, nb, lat, option, pruned, budget, lat_budget, shared, narrowings=()):
    best = np.inf
    rows = np.arange(sens.shape[0])
    for choice in itertools.product(range(sens.shape[1]), repeat=sens.shape[0]):
        choice = np.array(choice)
        if np.isfinite(sens[rows, choice]).all() and _feasible(
                choice, nb, lat, option, pruned, budget, lat_budget, shared, narrowings):
            best = min(best, float(sens[rows, choice].sum()))
    return best


def _instance(rng, n_sub, n_weights):
    """Columns: pruned, then each weight format with input option 0 (fp) and 1 (quantized:
    more sensitive, faster)."""
    nb_w = np.sort(rng.integers(1, 100, (n_sub, n_weights)), axis=1)
    sens_w = np.sort(rng.random((n_sub, n_weights)), axis=1)[:, ::-1]
    lat_w = rng.random((n_sub, n_weights)) + 0.5
    cols = [(None, None)] + [(w, o) for w in range(n_weights) for o in (0, 1)]
    sens = np.array([[2.0 if w is None else sens_w[s, w] + 0.3 * o * rng.random()
                      for w, o in cols] for s in range(n_sub)])
    nb = np.array([[0 if w is None else nb_w[s, w] for w, o in cols] for s in range(n_sub)])
    lat = np.array([[0.0 if w is None else lat_w[s, w] * (0.4 if o else 1.0)
                     for w, o in cols] for s in range(n_sub)])
    option = np.array([[-1 if w is None else o for w, o in cols]] * n_sub)
    pruned = np.array([[w is None for w, o in cols]] * n_sub)
    return sens, nb, lat, option, pruned


@pytest.mark.parametrize("seed", range(10))
def test_shared_options_and_latency_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    sens, nb, lat, option, pruned = _instance(rng, 4, 2)
    shared = [[0, 1, 2]] if seed % 2 else [[0, 1], [2, 3]]
    budget = int(rng.integers(nb[:, 1:].min(1).sum(), nb.max(1).sum() + 1))
    lat_budget = float(rng.uniform(0.3, 1.0) * lat.max(1).sum())
    want = _brute(sens, nb, lat, option, pruned, budget, lat_budget, shared)
    if not np.isfinite(want):
        with pytest.raises(ConfigError, match="latency budget"):
            solve(sens, nb, budget, pruned=pruned, shared=shared, option=option, latency=lat,
                  latency_budget=lat_budget)
        return
    sol = solve(sens, nb, budget, pruned=pruned, shared=shared, option=option, latency=lat,
                latency_budget=lat_budget)
    assert sol.sensitivity == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert _feasible(sol.choice, nb, lat, option, pruned, budget, lat_budget, shared, ())
    assert sol.latency == pytest.approx(exact_latency(sol.choice, lat, pruned))


def test_without_the_shared_constraint_options_mix():
    """The constraint binds: unconstrained, the optimum mixes options in a group."""
    sens = np.array([[1.0, 0.0], [0.0, 1.0]])       # s0 prefers option 1, s1 option 0
    nb = np.ones((2, 2), int)
    option = np.array([[0, 1], [0, 1]])
    free = solve(sens, nb, 10)
    assert sorted(free.choice.tolist()) == [0, 1] and free.choice[0] == 1
    tied = solve(sens, nb, 10, shared=[[0, 1]], option=option)
    assert tied.choice[0] == tied.choice[1] and tied.sensitivity == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_latency_of_narrowed_sinks_equals_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    sens, nb, lat, option, pruned = _instance(rng, 3, 2)
    # subgroup 2 is a sink fed by 0 and 1: its bytes and latency shrink with each pruned one
    frac = np.array([1.0, 0.5, 0.0])
    nw = Narrowing((0, 1), (2,), (nb[2][:, None] * frac[None, :]).astype(int)[None],
                   latency=(lat[2][:, None] * frac[None, :])[None])
    budget = int(nb.max(1).sum())
    lat_budget = float(0.6 * lat.max(1).sum())
    want = _brute(sens, nb, lat, option, pruned, budget, lat_budget, [], [nw])
    sol = solve(sens, nb, budget, pruned=pruned, narrowings=[nw], latency=lat,
                latency_budget=lat_budget)
    assert sol.sensitivity == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert sol.latency <= lat_budget + 1e-9


def test_latency_config_errors():
    sens, nb = np.ones((2, 2)), np.ones((2, 2), int)
    with pytest.raises(ConfigError, match="latency budget needs"):
        solve(sens, nb, 10, latency=np.ones((2, 2)))
    with pytest.raises(ConfigError, match="latency budget needs"):
        solve(sens, nb, 10, latency=np.full((2, 2), np.nan), latency_budget=1.0)
    with pytest.raises(ConfigError, match="option must be"):
        solve(sens, nb, 10, shared=[[0, 1]], option=np.zeros((3, 2)))


@pytest.mark.parametrize("seed", range(6))
def test_fixed_costs_per_candidate_used_equal_brute_force(seed):
    """A fixed cost per (group, candidate) used: a kernel call per format a linear takes."""
    rng = np.random.default_rng(200 + seed)
    sens, nb, lat, _, pruned = _instance(rng, 4, 2)
    fixed = [((0, 1, 2), rng.random(sens.shape[1]) * 0.5)]
    fixed[0][1][0] = 0.0                                   # pruned: no call
    budget = int(nb.max(1).sum())
    lat_budget = float(rng.uniform(0.5, 1.2) * lat.max(1).sum())
    best = np.inf
    rows = np.arange(4)
    for choice in itertools.product(range(sens.shape[1]), repeat=4):
        choice = np.array(choice)
        if nb[rows, choice].sum() > budget:
            continue
        if exact_latency(choice, lat, pruned, (), fixed) > lat_budget + 1e-12:
            continue
        best = min(best, float(sens[rows, choice].sum()))
    if not np.isfinite(best):
        with pytest.raises(ConfigError):
            solve(sens, nb, budget, pruned=pruned, latency=lat, latency_budget=lat_budget,
                  fixed=fixed)
        return
    sol = solve(sens, nb, budget, pruned=pruned, latency=lat, latency_budget=lat_budget,
                fixed=fixed)
    assert sol.sensitivity == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert sol.latency == pytest.approx(exact_latency(sol.choice, lat, pruned, (), fixed))
    assert sol.latency <= lat_budget * (1 + 1e-9)


def test_one_format_saves_the_second_call():
    """Two subgroups of one linear, two formats of equal per-row time: mixing them pays the
    fixed cost twice, so a budget between one and two calls forces one format."""
    sens = np.array([[0.0, 1.0], [1.0, 0.0]])      # each prefers another format
    nb = np.ones((2, 2), int)
    lat = np.full((2, 2), 1.0)
    fixed = [((0, 1), np.array([5.0, 5.0]))]
    mixed = solve(sens, nb, 10, latency=lat, latency_budget=20.0, fixed=fixed)
    assert mixed.choice.tolist() == [0, 1] and mixed.latency == 12.0
    one = solve(sens, nb, 10, latency=lat, latency_budget=8.0, fixed=fixed)
    assert one.choice[0] == one.choice[1] and one.latency == 7.0


def test_a_call_per_run_of_one_format():
    """[a, b, a] is three kernel calls, [a, a, b] two: with a budget for two calls and
    sensitivities that prefer the alternating plan, the program reorders nothing but pays."""
    sens = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.5]])
    nb = np.ones((3, 2), int)
    lat = np.zeros((3, 2))
    fixed = [((0, 1, 2), np.array([1.0, 1.0]))]
    assert exact_latency(np.array([0, 1, 0]), lat, np.zeros((3, 2), bool), (), fixed) == 3.0
    assert exact_latency(np.array([0, 1, 1]), lat, np.zeros((3, 2), bool), (), fixed) == 2.0
    free = solve(sens, nb, 10, latency=lat, latency_budget=3.0, fixed=fixed)
    assert free.choice.tolist() == [0, 1, 0]
    two = solve(sens, nb, 10, latency=lat, latency_budget=2.0, fixed=fixed)
    assert two.choice.tolist() == [0, 1, 1] and two.latency == 2.0
