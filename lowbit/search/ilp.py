"""The integer-program baseline: one candidate per subgroup, least total sensitivity, under a
byte budget (a multiple-choice knapsack), solved exactly by HiGHS (``highspy``)::

    minimise    sum_{s,c} S[s,c] x[s,c]
    subject to  sum_c x[s,c] = 1                                    every subgroup s
                sum_{s,c} B[s,c] x[s,c] <= budget                   bytes (lowbit.search.cost)
                sum_{c pruned} x[t0,c] = sum_{c pruned} x[t,c]      every t tied to t0
                x[s,c] in {0, 1};  no variable where S[s,c] is not finite (not offered)

**Narrowing** (``Narrowing``: o and the heads that feed it, FFN-out and its neuron blocks):
the bytes of a sink subgroup s depend on its candidate c and on how many of its F feeder
units are pruned (``cost.narrowed_bytes``: not linear, a finer group after pruning can even
add bytes). Exactly, with y[n] binary (n = 0..F feeders pruned) and z[s,c,n] in [0, 1]::

    sum_n y[n] = 1,   sum_n n y[n] = sum_{f feeder} sum_{c pruned} x[f,c]
    sum_n z[s,c,n] = x[s,c],   sum_c z[s,c,n] = y[n]     (z: the joint of the two one-hot
    bytes row: sum_{c,n} B[s,c,n] z[s,c,n]                choices, their outer product)

(the marginals admit only the outer product of two one-hot vectors, and make the relaxation
far tighter than ``z >= x + y - 1``: HiGHS solves MiniLM per head in well under a second)

instead of B[s,c] x[s,c].

**Shared input choices** (``shared``, ``option``: the subgroups of one linear take one input
choice, ``space.Candidate.act``): ``option[s,c]`` the input option of column c (-1: none, a
pruned column), one binary y[g,o] per group g and option o::

    sum_o y[g,o] = 1,   sum_{c: option[s,c] = o} x[s,c] <= y[g,o]      every s in g, every o

**Latency** (optional, ``latency`` [S, C] seconds, ``latency_budget``): a second knapsack row,
the sinks' rows as their bytes (``Narrowing.latency`` [sinks, C, F + 1] on the z variables),
and ``fixed`` costs: per group g of subgroups (one linear's row blocks, in row order) and
candidate c, A[g,c] paid once per run of consecutive subgroups of g that take c (a kernel call
per block of one format, as ``SplitRowBlocks`` merges rows), through v[s,c] in [0, 1],
v[s,c] >= x[s,c] - x[s',c] (s' the subgroup before s in g; v >= x for the first)::

    sum_{s,c} T[s,c] x[s,c] + sum_{g, s in g, c} A[g,c] v[s,c] <= latency_budget

A pruned subgroup ends a run here (its rows leave the graph, so the blocks around it may merge
there: the count is then an upper bound).

The search fills T and A from measured kernel times (``lowbit.search.latency``). Subgroups of
a fixed-cost group keep every candidate (a dominated one may save a kernel call).

Not modelled (a bound, never below the real size): the linears only
a sink reads (``Narrowing.reads``) are counted when the sink itself is pruned whole (the plan
and ``Solution.bytes`` count them 0; pruning all its feeders removes the same linears and is
counted exactly).

Candidates dominated within their subgroup (another has bytes <= and sensitivity <=, one of
them strictly) are dropped before the solve, unless pruned (ties need them) or of a sink
subgroup; in a tied or feeding subgroup only by an unpruned candidate (before 2026-12-04 a
pruned one could drop them, and a tie then lost choices it needed): the optimum is unchanged. Sensitivities are scaled to a maximum of 1 for the solver (HiGHS' absolute gap is
1e-6) and reported unscaled; gaps are 0 and tolerances 1e-9, so the optimum is exact to about
1e-9 of the largest sensitivity (brute force agrees: tests/search/test_ilp.py). A budget below the smallest reachable size raises a ConfigError
giving that size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from lowbit.errors import ConfigError, LowbitError

__all__ = ["Budget", "Narrowing", "Solution", "exact_bytes", "exact_latency", "least_bytes",
           "runs", "solve"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """A size budget: ``bytes`` (total stored bytes of the searched weights), or ``avg_bits``
    (stored bits per weight element, scales and zero points included). Exactly one. Optional
    ``seconds``: a latency budget, the summed measured kernel time of the searched linears
    (``SensitivityTable.with_latency``: at the tokens per call it was measured at)."""

    bytes: int | None = None
    avg_bits: float | None = None
    seconds: float | None = None

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
        if self.seconds is not None and (isinstance(self.seconds, bool) or not isinstance(
                self.seconds, (int, float)) or not 0 < self.seconds < float("inf")):
            raise ConfigError(f"Budget.seconds: must be a finite number > 0, got "
                              f"{self.seconds!r}")

    def to_bytes(self, elements: int) -> int:
        """The budget in bytes for ``elements`` weight elements (avg_bits rounded down)."""
        if self.bytes is not None:
            return int(self.bytes)
        return int(self.avg_bits * elements // 8)


@dataclasses.dataclass(frozen=True)
class Narrowing:
    """Subgroups ``sinks`` whose stored bytes depend on how many of the pruning units
    ``feeders`` (one subgroup index per unit) are pruned: ``nbytes[j, c, n]`` the bytes of
    ``sinks[j]`` as candidate c with n feeders pruned (module docstring); ``reads``: the
    subgroups stored only while a sink is kept (``exact_bytes`` counts them 0 when every sink
    is pruned; the program counts them, a bound)."""

    feeders: tuple[int, ...]
    sinks: tuple[int, ...]
    nbytes: np.ndarray
    reads: tuple[int, ...] = ()
    latency: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "feeders", tuple(int(f) for f in self.feeders))
        object.__setattr__(self, "sinks", tuple(int(t) for t in self.sinks))
        object.__setattr__(self, "reads", tuple(int(t) for t in self.reads))
        nb = np.asarray(self.nbytes, dtype=np.int64)
        object.__setattr__(self, "nbytes", nb)
        if not self.feeders or not self.sinks or set(self.feeders) & set(self.sinks) or \
                nb.ndim != 3 or nb.shape[0] != len(self.sinks) or \
                nb.shape[2] != len(self.feeders) + 1 or (nb < 0).any():
            raise ConfigError(f"Narrowing: feeders {self.feeders} and sinks {self.sinks} "
                              f"(disjoint, non-empty) need bytes [sinks, candidates, feeders "
                              f"+ 1] >= 0, got {nb.shape}")
        if self.latency is not None:
            lat = np.asarray(self.latency, dtype=float)
            object.__setattr__(self, "latency", lat)
            if lat.shape != nb.shape or not (np.isfinite(lat) & (lat >= 0)).all():
                raise ConfigError(f"Narrowing: latency must be finite, >= 0 and shaped as the "
                                  f"bytes {nb.shape}, got {lat.shape}")

    def bytes_of(self, choice: np.ndarray, pruned: np.ndarray) -> int:
        """The sinks' bytes under ``choice`` (a column per subgroup)."""
        n = sum(bool(pruned[f, choice[f]]) for f in self.feeders)
        return int(sum(self.nbytes[j, choice[s], n] for j, s in enumerate(self.sinks)))

    def latency_of(self, choice: np.ndarray, pruned: np.ndarray) -> float:
        """The sinks' latency under ``choice`` (0 without a latency array)."""
        if self.latency is None:
            return 0.0
        n = sum(bool(pruned[f, choice[f]]) for f in self.feeders)
        return float(sum(self.latency[j, choice[s], n] for j, s in enumerate(self.sinks)))


def exact_bytes(choice: np.ndarray, nbytes: np.ndarray, pruned: np.ndarray,
                narrowings: Sequence[Narrowing] = ()) -> int:
    """Stored bytes of ``choice`` (a column per subgroup), sinks as their narrowing says, the
    subgroups only a sink pruned whole reads counted 0."""
    sink = {s for nw in narrowings for s in nw.sinks}
    sink |= {r for nw in narrowings if all(pruned[s, choice[s]] for s in nw.sinks)
             for r in nw.reads}
    rest = [s for s in range(len(choice)) if s not in sink]
    return int(nbytes[rest, choice[rest]].sum()) + sum(nw.bytes_of(choice, pruned)
                                                       for nw in narrowings)


def runs(choice: np.ndarray, group: Sequence[int]) -> list[int]:
    """The candidate of each run of consecutive subgroups of ``group`` with one choice."""
    out: list[int] = []
    for i, s in enumerate(group):
        if i == 0 or choice[s] != choice[group[i - 1]]:
            out.append(int(choice[s]))
    return out


def exact_latency(choice: np.ndarray, latency: np.ndarray, pruned: np.ndarray,
                  narrowings: Sequence[Narrowing] = (),
                  fixed: Sequence[tuple[Sequence[int], np.ndarray]] = ()) -> float:
    """Summed latency of ``choice``, sinks as their narrowing says (as ``exact_bytes``), plus
    each group's fixed cost per run of one candidate (module docstring)."""
    sink = {s for nw in narrowings for s in nw.sinks}
    rest = [s for s in range(len(choice)) if s not in sink]
    calls = sum(float(np.asarray(a)[c]) for g, a in fixed for c in runs(choice, list(g)))
    return float(latency[rest, choice[rest]].sum()) + calls + sum(
        nw.latency_of(choice, pruned) for nw in narrowings)


@dataclasses.dataclass(frozen=True)
class Solution:
    """``choice[s]``: the column chosen for subgroup s; its total sensitivity and bytes (and
    latency, NaN without one); ``seconds``: the HiGHS solve alone; ``variables``: binaries
    after pruning dominated ones."""

    choice: np.ndarray
    sensitivity: float
    bytes: int
    seconds: float
    variables: int
    latency: float = float("nan")


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


def _kept(sens: np.ndarray, nbytes: np.ndarray, pruned: np.ndarray,
          bound: np.ndarray | None = None, latency: np.ndarray | None = None,
          option: np.ndarray | None = None) -> np.ndarray:
    """Mask [S, C] of the finite, non-dominated (or pruned) candidates. In a subgroup whose
    pruning is ``bound`` (tied to others, or narrowing a sink) a pruned candidate dominates
    nothing: choosing it costs more than its own row says. With a ``latency`` it counts as a
    third cost; with input ``option`` s only a column of the same option dominates (the
    option is shared with other subgroups)."""
    ok = np.isfinite(sens)
    keep = ok.copy()
    lat = np.zeros(sens.shape) if latency is None else latency
    opt = np.zeros(sens.shape, int) if option is None else option
    for s in range(sens.shape[0]):
        cols = np.flatnonzero(ok[s])
        if bound is not None and bound[s]:
            cols = cols[~pruned[s, cols]]
        for c in cols:
            if pruned[s, c]:
                continue
            same = opt[s, cols] == opt[s, c]
            le = (nbytes[s, cols] <= nbytes[s, c]) & (sens[s, cols] <= sens[s, c]) & \
                (lat[s, cols] <= lat[s, c]) & same
            lt = (nbytes[s, cols] < nbytes[s, c]) | (sens[s, cols] < sens[s, c]) | \
                (lat[s, cols] < lat[s, c])
            # dominated strictly, or an equal twin earlier in the row
            if (le & lt).any() or (le & ~lt & (cols < c)).any():
                keep[s, c] = False
    return keep


def solve(sensitivity: np.ndarray, nbytes: np.ndarray, budget: int, *,
          pruned: np.ndarray | None = None, ties: Sequence[Sequence[int]] = (),
          narrowings: Sequence[Narrowing] = (), shared: Sequence[Sequence[int]] = (),
          option: np.ndarray | None = None, latency: np.ndarray | None = None,
          latency_budget: float | None = None,
          fixed: Sequence[tuple[Sequence[int], np.ndarray]] = (),
          time_limit: float = 60.0) -> Solution:
    """The integer program of the module docstring on plain arrays [S, C] (``pruned``: which
    columns prune; ``ties``: lists of subgroup indices that prune together; ``narrowings``:
    sinks whose bytes depend on their feeders, ``nbytes`` of their rows unused; ``shared``
    and ``option`` [S, C]: groups of subgroups that take one input option; ``latency``
    [S, C], ``fixed`` [(subgroups, A [C])] and ``latency_budget``: the latency row)."""
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
    sink = np.zeros(n_sub, bool)
    for nw in narrowings:
        if max(nw.feeders + nw.sinks) >= n_sub or nw.nbytes.shape[1] != sens.shape[1] or \
                sink[list(nw.sinks)].any():
            raise ConfigError(f"solve: a narrowing (sinks {nw.sinks}) names subgroups outside "
                              f"0..{n_sub - 1}, another candidate count, or a sink twice")
        sink[list(nw.sinks)] = True
    _check_budget(sens, least_bytes(sens, nb, pruned, narrowings), pruned, ties, budget)
    lat = None
    if latency is not None or latency_budget is not None:
        lat = np.asarray(latency, dtype=float) if latency is not None else None
        if lat is None or latency_budget is None or lat.shape != sens.shape or \
                not (np.isfinite(lat) & (lat >= 0)).all() or not latency_budget >= 0:
            raise ConfigError(f"solve: a latency budget needs latency [subgroups, candidates] "
                              f"{sens.shape} finite and >= 0 and a budget >= 0 (got "
                              f"{None if lat is None else lat.shape}, {latency_budget!r})")
        if any(nw.latency is None for nw in narrowings):
            raise ConfigError("solve: with a latency budget every narrowing needs latency")
    if fixed and lat is None:
        raise ConfigError("solve: fixed latency costs need latency and a latency budget")
    for g, a in fixed:
        a = np.asarray(a, dtype=float)
        if a.shape != (sens.shape[1],) or not (np.isfinite(a) & (a >= 0)).all() or \
                any(not 0 <= s < n_sub for s in g):
            raise ConfigError(f"solve: a fixed cost needs subgroups in range and [{sens.shape[1]}]"
                              f" finite seconds >= 0, got {a.shape}")
    opt = None
    if option is not None:
        opt = np.asarray(option, dtype=int)
        if opt.shape != sens.shape:
            raise ConfigError(f"solve: option must be [subgroups, candidates] {sens.shape}, "
                              f"got {opt.shape}")
        if any(not 0 <= s < n_sub for g in shared for s in g):
            raise ConfigError("solve: a shared group names a subgroup out of range")

    bound = np.zeros(n_sub, bool)
    bound[[t for tie in ties for t in tie] + [f for nw in narrowings for f in nw.feeders]] = True
    keep = _kept(sens, nb, pruned, bound, lat, opt if shared else None)
    for g, _ in fixed:
        keep[list(g)] = np.isfinite(sens[list(g)])
    keep[sink] = np.isfinite(sens[sink])
    cols = [(s, c) for s in range(n_sub) for c in np.flatnonzero(keep[s])]
    var = {sc: i for i, sc in enumerate(cols)}
    top = max(float(sens[keep].max()), 1e-300)
    rows: list[tuple[list[int], list[float], float, float]] = []
    for s in range(n_sub):
        idx = [var[s, c] for c in np.flatnonzero(keep[s])]
        rows.append((idx, [1.0] * len(idx), 1.0, 1.0))
    n = len(cols)
    extra: list[float] = []             # bytes of the narrowing variables (y: 0, z: B)
    integer: list[bool] = []
    budget_idx = [i for i, (s, _) in enumerate(cols) if not sink[s]]
    budget_val = [float(nb[cols[i]]) for i in budget_idx]
    lat_idx = [i for i in budget_idx if lat is not None and lat[cols[i]] > 0]
    lat_val = [float(lat[cols[i]]) for i in lat_idx] if lat is not None else []
    for nw in narrowings:
        f_count = len(nw.feeders)
        y = [n + len(extra) + i for i in range(f_count + 1)]
        extra += [0.0] * (f_count + 1)
        integer += [True] * (f_count + 1)
        rows.append((y, [1.0] * len(y), 1.0, 1.0))
        feed = [var[f, c] for f in nw.feeders for c in np.flatnonzero(keep[f] & pruned[f])]
        rows.append((y + feed, [float(i) for i in range(f_count + 1)] + [-1.0] * len(feed),
                     0.0, 0.0))
        for j, s in enumerate(nw.sinks):
            at_n: list[list[int]] = [[] for _ in range(f_count + 1)]
            for c in np.flatnonzero(keep[s]):
                zc = []
                for m in range(f_count + 1):
                    z = n + len(extra)
                    extra.append(float(nw.nbytes[j, c, m]))
                    integer.append(False)
                    zc.append(z)
                    at_n[m].append(z)
                    if nw.nbytes[j, c, m]:
                        budget_idx.append(z)
                        budget_val.append(float(nw.nbytes[j, c, m]))
                    if lat is not None and nw.latency[j, c, m] > 0:
                        lat_idx.append(z)
                        lat_val.append(float(nw.latency[j, c, m]))
                rows.append((zc + [var[s, c]], [1.0] * len(zc) + [-1.0], 0.0, 0.0))
            for m, zs in enumerate(at_n):
                rows.append((zs + [y[m]], [1.0] * len(zs) + [-1.0], 0.0, 0.0))
    rows.append((budget_idx, budget_val, -np.inf, float(budget)))
    for g, a in fixed:
        g = list(g)
        for c in np.flatnonzero(np.asarray(a, dtype=float) > 0):
            for i, s in enumerate(g):           # v >= x[s,c] - x[previous,c]: a run starts
                if not keep[s, c]:
                    continue
                v = n + len(extra)
                extra.append(0.0)
                integer.append(False)
                lat_idx.append(v)
                lat_val.append(float(a[c]))
                before = g[i - 1] if i else None
                if before is not None and keep[before, c]:
                    rows.append(([var[s, c], var[before, c], v], [1.0, -1.0, -1.0], -np.inf, 0.0))
                else:
                    rows.append(([var[s, c], v], [1.0, -1.0], -np.inf, 0.0))
    if lat is not None:
        unit = max(max(lat_val, default=0.0), 1e-300)     # scaled to 1, as the objective
        rows.append((lat_idx, [v / unit for v in lat_val], -np.inf, latency_budget / unit))
    for group in (shared if opt is not None else ()):
        options = sorted({int(opt[s, c]) for s in group for c in np.flatnonzero(keep[s])
                          if opt[s, c] >= 0})
        if len(options) < 2:
            continue
        y = {o: n + len(extra) + i for i, o in enumerate(options)}
        extra += [0.0] * len(options)
        integer += [True] * len(options)
        rows.append((list(y.values()), [1.0] * len(y), 1.0, 1.0))
        for s in group:
            for o, yo in y.items():
                idx = [var[s, c] for c in np.flatnonzero(keep[s] & (opt[s] == o))]
                if idx:
                    rows.append((idx + [yo], [1.0] * len(idx) + [-1.0], -np.inf, 0.0))
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
    total_vars = n + len(extra)
    h.addVars(total_vars, np.zeros(total_vars), np.ones(total_vars))
    h.changeColsCost(n, np.arange(n, dtype=np.int32),
                     np.array([sens[s, c] / top for s, c in cols]))
    kinds = [highspy.HighsVarType.kInteger] * n + [
        highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
        for i in integer]
    h.changeColsIntegrality(total_vars, np.arange(total_vars, dtype=np.int32), np.array(kinds))
    for idx, val, lo, hi in rows:
        h.addRow(lo, hi, len(idx), np.array(idx, dtype=np.int32), np.array(val))
    t = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - t
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible and lat is not None:
        raise ConfigError(f"the latency budget of {latency_budget:.6g} s cannot be met with "
                          f"{budget} bytes (the fastest choices within the bytes take more; "
                          f"raise either budget)")
    if status == highspy.HighsModelStatus.kInfeasible and narrowings:
        raise ConfigError(f"budget of {budget} bytes is infeasible: o / down narrowed by "
                          f"pruning take more than the least size each allows alone (the "
                          f"smallest choice takes more than {budget} bytes; raise the budget)")
    if status != highspy.HighsModelStatus.kOptimal:
        raise LowbitError(f"HiGHS did not prove an optimum: {h.modelStatusToString(status)} "
                          f"after {seconds:.2f} s ({n} binaries)")
    x = np.asarray(h.getSolution().col_value)
    choice = np.full(n_sub, -1)
    for i, (s, c) in enumerate(cols):
        if x[i] > 0.5:
            choice[s] = c
    picked = np.arange(n_sub)
    total = exact_bytes(choice, nb, pruned, narrowings) if (choice >= 0).all() else -1
    if (choice < 0).any() or total > budget:
        raise LowbitError(f"HiGHS returned an invalid assignment ({total} bytes for a budget "
                          f"of {budget})")
    took = math.nan
    if lat is not None:
        took = exact_latency(choice, lat, pruned, narrowings, fixed)
        if took > latency_budget * (1 + 1e-6):
            raise LowbitError(f"HiGHS returned an assignment of {took:.6g} s for a latency "
                              f"budget of {latency_budget:.6g} s")
    return Solution(choice, float(sens[picked, choice].sum()), total, seconds, n, took)


def least_bytes(sens: np.ndarray, nb: np.ndarray, pruned: np.ndarray,
                narrowings: Sequence[Narrowing]) -> np.ndarray:
    """``nb`` with each sink's row at its least bytes over the feeder counts its feeders can
    reach (n = 0 only when none of them can prune): a lower bound, exact without pruning."""
    least = nb.copy()
    for nw in narrowings:
        can = any((np.isfinite(sens[f]) & pruned[f]).any() for f in nw.feeders)
        least[list(nw.sinks)] = nw.nbytes.min(2) if can else nw.nbytes[:, :, 0]
    return least


def _check_budget(sens: np.ndarray, nb: np.ndarray, pruned: np.ndarray,
                  ties: Sequence[Sequence[int]], budget: int) -> None:
    """ConfigError with the smallest feasible size when ``budget`` is below it."""
    smallest = _smallest(sens, nb, pruned, ties)
    if budget < smallest:
        raise ConfigError(f"budget of {budget} bytes is infeasible: the smallest choice "
                          f"takes {smallest} bytes (raise the budget to at least that)")


def _smallest(sens: np.ndarray, nb: np.ndarray, pruned: np.ndarray,
              ties: Sequence[Sequence[int]]) -> int:
    """The smallest size over choices (ties all pruned or none)."""
    big = np.iinfo(np.int64).max // 4
    cost = np.where(np.isfinite(sens), nb, big)
    least = cost.min(1)
    tied = {t for tie in ties for t in tie}
    smallest = sum(int(least[s]) for s in range(len(least)) if s not in tied)
    for tie in ties:  # all pruned, or none: the cheaper of the two
        pr = [int(np.where(pruned[t], cost[t], big).min()) for t in tie]
        un = [int(np.where(~pruned[t], cost[t], big).min()) for t in tie]
        smallest += min(sum(pr), sum(un))
    return smallest
