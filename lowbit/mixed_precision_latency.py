"""``measure_latency``: the kernel time of each (shape, candidate) on a target, measured, for
the latency budget of mixed-precision search (``lowbit.search.latency`` says what a record
holds, how it is stored and what is not modelled).

    table = measure_latency([(384, 384), (1536, 384)], 128, space.candidates(), space,
                            target="cpu", db="tuning/")      # <db>/latency/<target key>.json
    T = subgroup_latency(table, subgroups, space.candidates(), 128)            # [S, C]

Per distinct (N, K) and candidate (pruned ones cost 0, measured never): ``torch.nn.Linear(K,
N)`` with seeded random weights, captured at input [M, K], the one-entry ``PrecisionPlan``
(the whole linear as that candidate, its ``act`` included) applied by
``lowbit.apply_precision`` (``calibration=[x]`` for int8 inputs), ``lowbit.compile(target,
tune)``; the module's ``main`` timed by TVM's time evaluator on its own VM (inputs already on
the device: no binding, no copies), the candidates of one shape and the overhead module
(``x * 1.0`` on the same input) interleaved round by round; medians over rounds.

``apply_precision`` reads a plan against the graph's ``TransformerMap``, and a lone linear is
in no transformer: it gets ``spotter=`` one that reads the linear as the graph's head.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.passes.patterns import TransformerMap
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.search.latency import LatencyTable
from lowbit.search.plan import PlanEntry, PrecisionPlan
from lowbit.search.space import Candidate, SearchSpace, Subgroup

__all__ = ["measure_latency"]

SEED = 0
ROUND_S = 0.01       # one round of one module: enough calls to last ~10 ms (timer resolution)


class _Linear(torch.nn.Module):
    def __init__(self, n: int, k: int):
        super().__init__()
        self.linear = torch.nn.Linear(k, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _Overhead(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def _linears(graph: Any) -> list:
    """The ``LinearRef`` s of ``graph`` (refused ones left out)."""
    from lowbit.passes.view import view_of

    view = view_of(graph, "measure_latency")
    return [r for node in view.nodes() if (r := view.linear(node)) is not None
            and hasattr(r, "out_features")]


def _lone(graph: Any) -> TransformerMap:
    """The structure of a graph of one linear: that linear, as the head."""
    return TransformerMap(blocks=[], head=_linears(graph)[:1])


def _storage(space: SearchSpace, k: int, cand: Candidate) -> dict:
    """What of ``space`` decides the kernel of ``cand`` at width K (a record is measured again
    when it changes)."""
    if cand.code == "fp":
        return {}
    fitted = space.fitted(k)
    return {"group": None if fitted.per_row(k) or cand.act == "int8" else fitted.group,
            "symmetric": space.symmetric,
            **({"bcq_offset": space.bcq_offset} if cand.code == "bcq" else {})}


def _reusable(rec: dict | None, storage: dict, tuned: bool) -> bool:
    return rec is not None and rec.get("storage") == storage and (rec.get("tuned") or not tuned)


def _build(gm, plan: PrecisionPlan | None, calibration, target, tune):
    """The compiled module of ``gm`` (with ``plan`` applied): what is timed."""
    import lowbit

    if plan is not None:
        gm = lowbit.apply_precision(gm, plan, calibration=calibration, progress=False,
                                    spotter=_lone)
    return lowbit.compile(gm, target=target, tune=tune, progress=False)


def _timer(mod, x: np.ndarray):
    """A call returning seconds per call of ``mod``'s ``main`` on ``x`` (already on the
    device), over as many calls as last ~``ROUND_S``."""
    import tvm

    vm = mod._ready()                       # the module's VM and transformed weights
    args = [tvm.runtime.tensor(x, mod.device), *mod._params]
    once = vm.time_evaluator("main", mod.device, number=1, repeat=3)(*args)
    number = max(1, math.ceil(ROUND_S / max(float(np.median(once.results)), 1e-7)))
    ev = vm.time_evaluator("main", mod.device, number=number, repeat=1)
    return lambda: ev(*args).mean


def _shapes(shapes: Sequence[Any]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in shapes:
        nk = (s.out_features, s.in_features) if isinstance(s, Subgroup) else s
        ok = isinstance(nk, (tuple, list)) and len(nk) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in nk)
        if not ok:
            raise ConfigError(f"measure_latency: a shape is (n, k) with ints >= 1 (or a "
                              f"Subgroup), got {s!r}")
        if tuple(nk) not in out:
            out.append(tuple(nk))
    return out


def measure_latency(shapes: Sequence[Any], m: int, candidates: Sequence[Candidate],
                    space: SearchSpace, *, target: Any = "cpu", db: Any = None, tune: Any = None,
                    repeat: int = 15, progress: bool = True) -> LatencyTable:
    """The ``LatencyTable`` of every distinct (N, K) of ``shapes`` x ``candidates`` at input
    rows ``m`` (module docstring).

    Args:
        shapes: (n, k) pairs ([out, in] of the linear), or ``Subgroup`` s (their linear's).
        m: rows of the input (batch x sequence).
        candidates: among ``space.candidates()``; pruned ones cost 0, never measured.
        space: the storage (group, symmetric, BCQ iterations and offset) and input choices.
        target: as ``lowbit.compile`` takes it.
        db: the tuning database folder (default: ``tune.db`` when ``tune`` is given): records
            are read from and merged into ``<db>/latency/<target key>.json``; a key recorded
            with the same storage (and tuned, when ``tune`` is given) is not measured again.
            None: nothing is read or written.
        tune: None or ``lowbit.Tune(...)``, passed to ``lowbit.compile``.
        repeat: rounds; each times every module of a shape once, ~10 ms of calls each.
        progress: a bar over the shapes, one line per shape measured.

    Returns the table of the asked keys' records (measured now or read from ``db``).

    Raises:
        ConfigError: m < 1, a bad shape, a candidate not in ``space``, a width the space
            cannot store (``SearchSpace.check_width``), repeat < 1.
    """
    from lowbit.backends.tvm.target import resolve_target
    from lowbit.backends.tvm.tune import Tune, target_key

    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"measure_latency: m (rows of the input) must be an int >= 1, got "
                          f"{m!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"measure_latency: repeat must be an int >= 1, got {repeat!r}")
    offered = space.candidates()
    for c in candidates:
        if c not in offered:
            raise ConfigError(f"measure_latency: candidate {c!r} is not in the space's "
                              f"candidates ({', '.join(x.label() for x in offered)})")
    pairs = _shapes(shapes)
    for n, k in pairs:
        space.fitted(k).check_width(k, f"measure_latency shape n={n}, k={k}")
    if tune is not None and not isinstance(tune, Tune):
        raise ConfigError(f"measure_latency: tune must be None or lowbit.Tune(...), got "
                          f"{type(tune).__name__}")
    tgt = resolve_target(target)
    key = target_key(tgt)
    folder = db if db is not None else (tune.db if tune is not None else None)
    known = (LatencyTable.from_db(folder, key, str(tgt)) if folder is not None
             else LatencyTable(str(tgt), key))
    tuned = tune is not None
    measured: dict = {}
    kept: dict = {}
    overhead: dict[int, Any] = {}          # k -> the overhead module of input [m, k]
    with progress_bar(total=len(pairs), desc="latency", unit="shape", enabled=progress) as shown:
        for n, k in pairs:
            shown.set_postfix_str(f"{n}x{k}")
            todo = []
            for c in candidates:
                if c.pruned:
                    continue
                rec = known.record(n, k, m, c)
                if _reusable(rec, _storage(space, k, c), tuned):
                    kept[(n, k, m, c.code, c.bits, c.act)] = rec
                else:
                    todo.append(c)
            if todo:
                t0 = time.perf_counter()
                measured.update(_measure_shape(n, k, m, todo, space, tgt, tune, repeat,
                                               overhead))
                say(f"latency {n}x{k}, m={m}: " + ", ".join(
                    f"{c.label(space.symmetric)} "
                    f"{measured[(n, k, m, c.code, c.bits, c.act)]['seconds'] * 1e6:.1f} us"
                    for c in todo) + f" ({time.perf_counter() - t0:.0f} s)", enabled=progress)
            shown.update()
    table = LatencyTable(str(tgt), key, {**kept, **measured})
    if folder is not None and measured:
        LatencyTable(str(tgt), key, measured).save_to_db(folder)
    say(f"latency: {len(measured)} record(s) measured, {len(kept)} reused"
        + (f" ({LatencyTable.path_in(folder, key)})" if folder is not None else ""),
        enabled=progress)
    return table


def _float_linear(n: int, k: int, m: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """``torch.nn.Linear(k, n)`` with seeded weights ~ N(0, 1/k), bias ~ N(0, 0.01), and a
    seeded input [m, k] ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(SEED)
    model = _Linear(n, k).eval()
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(n, k, generator=gen) / math.sqrt(k))
        model.linear.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model, torch.randn(m, k, generator=gen)


def candidate_module(gm, cand: Candidate, space: SearchSpace, x: torch.Tensor, target, tune):
    """The compiled module of ``gm`` (one linear, captured at ``x``) with the linear stored as
    ``cand``: a one-entry plan through ``apply_precision`` (``calibration=[x]`` for int8
    inputs), then ``lowbit.compile``."""
    ref = _linears(gm)[0]
    n, k = ref.out_features, ref.in_features
    entry = PlanEntry(ref.name, "head", (0, n), k, n, cand.code, cand.bits, act=cand.act)
    acts = tuple(dict.fromkeys(space.activations + (cand.act,)))
    plan = PrecisionPlan((entry,), dataclasses.replace(space, activations=acts))
    return _build(gm, plan, [x] if cand.act == "int8" else None, target, tune)


def _measure_shape(n: int, k: int, m: int, cands: Sequence[Candidate], space: SearchSpace,
                   target, tune, repeat: int, overhead: dict) -> dict:
    """Records of ``cands`` on an [n, k] linear (module docstring)."""
    import lowbit

    model, x = _float_linear(n, k, m)
    gm = lowbit.capture(model, (x,))
    mods = [candidate_module(gm, c, space, x, target, tune) for c in cands]
    if k not in overhead:
        overhead[k] = _build(lowbit.capture(_Overhead().eval(), (x,)), None, None, target, None)
    xs = x.numpy()
    timers = [_timer(mod, xs) for mod in (*mods, overhead[k])]
    times: list[list[float]] = [[] for _ in timers]
    for _ in range(repeat):
        for t, timer in zip(times, timers):
            t.append(timer())
    med = [float(np.median(t)) for t in times]
    base = med[-1]
    out = {}
    for c, mod, raw in zip(cands, mods, med):
        out[(n, k, m, c.code, c.bits, c.act)] = {
            "seconds": max(raw - base, 0.0), "raw_seconds": raw, "overhead_seconds": base,
            "lowering": sorted({kind for _, kind in mod.meta["lowering"]}),
            "storage": _storage(space, k, c), "tuned": tune is not None,
            "tuned_kernels": len(mod.meta.get("tuned_kernels") or ()), "rounds": repeat}
    return out
