"""``lowbit.search_precision``: a mixed-precision, partly pruned plan for a captured graph under
a size budget (issue 17's integer-program baseline, ModelOpt ``auto_quantize`` style).

    plan = search_precision(gm, Budget(avg_bits=4.25), calibration=batches,
                            granularity=(PerHead(), PerNeurons(64)))
    print(plan.summary()); plan.save("plan.json")

    table = sensitivity_table(gm, calibration=batches)          # scored once,
    plans = [plan_for_budget(table, Budget(avg_bits=b)) for b in (3, 4, 5)]   # solved per budget

1. subgroups: the linears' row blocks (``lowbit.passes.subgroups``); o (down) joins the tie
   that holds every head (neuron) feeding it (``mixed_precision_prune.join_dead_linears``);
2. Fisher ``F = E[g^2]`` of each weight over the calibration batches, ``g`` the gradient of
   ``loss_fn(outputs, batch)`` (a task / LM loss: per-term values, e.g. ``lm_token_losses``,
   with random signs; a scalar, e.g. ``lm_loss``, as one term) or, by default, of the
   output-distillation surrogate ``sum(r * f) / sqrt(n)``, ``r ~ N(0, I)`` drawn per batch and
   output (``lowbit.search.sensitivity`` derives both, and why per-term values keep the units);
3. sensitivity ``0.5 * sum F (W - Q_c(W))^2`` per subgroup and candidate; for the pruned
   candidate, by default (``prune_cost="measured"``), the loss increase measured with each
   pruning unit removed from the float graph (``lowbit.mixed_precision_prune``; plus
   ``prune_margin`` standard errors), else ``0.5 * sum F W^2`` (``"taylor"``); real bytes per
   candidate (``lowbit.search.cost``), o / down at the width their pruned feeders leave
   (``mixed_precision_prune.plan_links``, ``lowbit.search.ilp``'s narrowing);
   with input choices (``SearchSpace.activations``), a candidate's score adds its input's,
   ``lowbit.mixed_precision_acts`` (the same Fisher estimate on the linear's input), in
   proportion to the subgroup's rows;
4. the integer program (``lowbit.search.ilp``, HiGHS): least total sensitivity within budget,
   bytes counted as ``apply_precision`` stores the plan (``PrecisionPlan.total_bytes``), the
   kept subgroups of a linear on one input choice, and with a latency budget
   (``Budget(seconds=...)``, ``SensitivityTable.with_latency``) the summed measured kernel
   times within it (``lowbit.search.latency``).

The graph is not modified (gradients go to ``torch.autograd.grad``; requires_grad flags are
restored). Applying the plan to the graph is a later pass.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx
from torch.utils import _pytree

from lowbit.errors import CalibrationError, ConfigError, LowbitError
from lowbit.mixed_precision_prune import (
    UnitCost,
    join_dead_linears,
    plan_links,
    pruning_units,
    removal,
    removal_losses,
)
from lowbit.passes.subgroups import DEFAULT_ROLES, list_subgroups
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.search.cost import total_bytes
from lowbit.search.ilp import Budget, exact_latency, solve
from lowbit.search.plan import PlanEntry, PrecisionPlan, narrowings
from lowbit.search.sensitivity import (
    FisherAccumulator,
    candidate_scores,
    distillation_error,
    fisher_objective,
    measured_costs,
    measured_price,
    spread,
)
from lowbit.search.space import ACTIVATIONS, Candidate, SearchSpace, Subgroup, WholeLinear

__all__ = ["PRUNE_COSTS", "SensitivityTable", "fisher", "lm_loss", "lm_token_losses",
           "plan_for_budget", "search_precision", "sensitivity_table"]

LossFn = Callable[[Any, Any], torch.Tensor]
PRUNE_COSTS = ("measured", "taylor")


def lm_token_losses(outputs: Any, batch: Any) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM per scored token [T] (float32): logits (the
    first output) against the batch's ``labels`` or, without them, its ``input_ids`` shifted
    by one; labels -100 are left out."""
    logits = outputs["logits"] if isinstance(outputs, dict) else _pytree.tree_leaves(outputs)[0]
    if not isinstance(batch, dict) or not ({"labels", "input_ids"} & set(batch)):
        raise ConfigError("lm_loss / lm_token_losses need batches as dicts with 'input_ids' "
                          "(or 'labels')")
    labels = batch.get("labels", batch.get("input_ids"))[:, 1:].reshape(-1)
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels, ignore_index=-100,
        reduction="none")
    return per_token[labels != -100]


def lm_loss(outputs: Any, batch: Any) -> torch.Tensor:
    """The mean of ``lm_token_losses``: one scalar (the Fisher takes it as one term; give
    ``lm_token_losses`` to the search to keep its units, ``lowbit.search.sensitivity``)."""
    return lm_token_losses(outputs, batch).mean()


def _run(gm: torch.nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return gm(**batch)
    if isinstance(batch, (tuple, list)):
        return gm(*batch)
    return gm(batch)


def _distillation(outputs: Any, gen: torch.Generator) -> torch.Tensor:
    """``sum_o sum(r_o * o) / sqrt(numel(o))`` over the float outputs (module docstring)."""
    total = None
    for o in _pytree.tree_leaves(outputs):
        if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad:
            r = torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device, o.dtype)
            term = (r * o).sum() / o.numel() ** 0.5
            total = term if total is None else total + term
    if total is None:
        raise ConfigError("search_precision: no graph output depends on the searched weights "
                          "(give loss_fn=)")
    return total


def _say(progress: bool, msg: str, t0: float) -> None:
    """A step's summary line on stderr: ``[lowbit] msg, 1.2 s`` (seconds since ``t0``)."""
    say(f"{msg}, {time.perf_counter() - t0:.1f} s", enabled=progress)


def fisher(gm: torch.nn.Module, weights: list[str], batches: Iterable[Any],
           loss_fn: LossFn | None = None, *, seed: int = 0, progress: bool = True
           ) -> FisherAccumulator:
    """Mean squared gradients of ``weights`` (parameter names of ``gm``) over ``batches``
    (``FisherAccumulator``; ``terms``: the loss terms seen, ``fisher_objective``); other
    parameters' requires_grad is off meanwhile, then restored."""
    params = dict(gm.named_parameters())
    missing = [w for w in weights if w not in params]
    if missing:
        raise ConfigError(f"search_precision: weights {missing[:3]} are not parameters of the "
                          f"graph (constants cannot take gradients)")
    acc, gen, t0 = FisherAccumulator(), torch.Generator().manual_seed(seed), time.perf_counter()
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in weights)
        for i, batch in enumerate(progress_bar(batches, desc="sensitivity: gradients",
                                               unit="batch", enabled=progress)):
            out = _run(gm, batch)
            loss = _objective(loss_fn)(out, batch, gen)
            if not torch.isfinite(loss.detach()).all():
                raise CalibrationError(f"batch {i}: the loss is {loss.detach().mean().item()} "
                                       f"(NaN or inf: check that batch)")
            acc.terms += 0 if loss_fn is None else max(1, loss.numel())
            loss = fisher_objective(loss, gen)
            grads = torch.autograd.grad(loss, [params[w] for w in weights], allow_unused=True)
            acc.add(dict(zip(weights, grads)), i)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if acc.batches == 0:
        raise CalibrationError("calibration data is empty: the sensitivity needs at least one "
                               "batch")
    _say(progress, f"sensitivity: gradients of {acc.batches} batch(es)", t0)
    return acc


def _as_out_in(t: torch.Tensor, sg: Subgroup) -> torch.Tensor:
    t = t.detach().to(torch.float32)
    return t if sg.layout == "out_in" else t.t()


@dataclasses.dataclass(frozen=True, eq=False)
class SensitivityTable:
    """What the integer program needs, computed once for any number of budgets: per subgroup
    (rows) and candidate (columns) the sensitivity and the stored bytes. ``pruned_scores``:
    the pruned column under each pricing computed ("taylor", and "measured" when measured);
    ``units``: the measured pruning units (``UnitCost``); ``links``: the o / down linears
    that pruning narrows (``lowbit.search.Link``; their ``nbytes`` rows are at full width)."""

    subgroups: tuple[Subgroup, ...]
    candidates: tuple[Candidate, ...]
    space: SearchSpace
    sensitivity: np.ndarray
    nbytes: np.ndarray
    info: dict
    pruned_scores: dict = dataclasses.field(default_factory=dict)
    units: tuple[UnitCost, ...] = ()
    links: tuple = ()
    input_scores: dict = dataclasses.field(default_factory=dict)
    latency: np.ndarray | None = None
    latency_fixed: tuple = ()

    @property
    def elements(self) -> int:
        return sum(sg.elements for sg in self.subgroups)

    def with_latency(self, latency, m: int | None = None) -> SensitivityTable:
        """This table with each candidate's kernel time: an array [subgroups, candidates] of
        seconds, or a ``lowbit.search.latency.LatencyTable`` and the tokens per call ``m`` to
        read it at (each subgroup's share of its linear's measured time,
        ``latency.latency_model``: with the table's times of a subgroup's rows too, a fixed
        cost per kernel call of a linear split into row blocks)."""
        fixed: tuple = ()
        if not isinstance(latency, np.ndarray):
            from lowbit.search.latency import latency_model
            if m is None:
                raise ConfigError("SensitivityTable.with_latency: a LatencyTable is read at "
                                  "m tokens per call: with_latency(table, m)")
            latency, fixed = latency_model(latency, self.subgroups, self.candidates, m)
        lat = np.asarray(latency, dtype=float)
        if lat.shape != self.sensitivity.shape or not (np.isfinite(lat) & (lat >= 0)).all():
            raise ConfigError(f"SensitivityTable.with_latency: need finite seconds >= 0 shaped "
                              f"{self.sensitivity.shape}, got {lat.shape}")
        return dataclasses.replace(self, latency=lat, latency_fixed=tuple(fixed))

    def columns(self, plan: PrecisionPlan) -> np.ndarray:
        """The column of each subgroup's entry in ``plan`` (a plan over these subgroups)."""
        at = {e.name: e.candidate for e in plan.entries}
        try:
            return np.array([self.candidates.index(at[sg.name]) for sg in self.subgroups])
        except (KeyError, ValueError):
            raise ConfigError("SensitivityTable.columns: the plan's entries are not this "
                              "table's subgroups and candidates") from None

    def latency_of(self, plan: PrecisionPlan) -> float:
        """``plan``'s summed kernel time as the integer program counts it (``with_latency``
        first), e.g. of a uniform plan, to budget a search at its speed."""
        if self.latency is None:
            raise ConfigError("SensitivityTable.latency_of: no latency (with_latency first)")
        pruned = np.array([[c.pruned for c in self.candidates]] * len(self.subgroups))
        return exact_latency(self.columns(plan), self.latency, pruned, narrowings(
            self.links, self.subgroups, self.candidates, self.space, self.latency),
            self.latency_fixed)

    def priced(self, prune_cost: str, margin: float | None = None) -> SensitivityTable:
        """This table with the pruned candidate priced by ``prune_cost`` (one it holds), a
        measured price with another ``margin`` (``prune_margin``), e.g. a measured table's
        Taylor twin for comparison; the rest shared."""
        if prune_cost not in self.pruned_scores:
            raise ConfigError(f"SensitivityTable.priced: this table holds pruned scores "
                              f"{sorted(self.pruned_scores)}, not {prune_cost!r}")
        col, info = self.pruned_scores[prune_cost], {**self.info, "prune_cost": prune_cost}
        if prune_cost == "measured" and margin is not None:
            col, info["prune_margin"] = _measured_column(self.subgroups, self.units, margin), margin
        sens = self.sensitivity.copy()
        sens[:, [c.pruned for c in self.candidates]] = col[:, None]
        return dataclasses.replace(self, sensitivity=sens, info=info)


def _measured_column(subgroups: Sequence[Subgroup], units: Sequence[UnitCost], margin: float
                     ) -> np.ndarray:
    """The pruned column [S]: each unit's ``measured_price`` spread over its subgroups."""
    col = np.empty(len(subgroups))
    for u in units:
        price = float(measured_price(u.mean, u.se, margin))
        col[list(u.subgroups)] = spread(price, [subgroups[i].elements for i in u.subgroups])
    return col


def _measure_pruning(gm: fx.GraphModule, subgroups: list[Subgroup], batches: list[Any],
                     loss_fn: LossFn | None, space: SearchSpace, taylor: np.ndarray,
                     margin: float, progress: bool
                     ) -> tuple[np.ndarray, tuple[UnitCost, ...], dict]:
    """Step 3's measured pruned column [S], the units and ``info`` entries."""
    t0 = time.perf_counter()
    members = pruning_units(subgroups)
    removals = [removal(gm, subgroups, u, space) for u in members]

    def loss(out: Any, ref: Any, batch: Any) -> float:
        if loss_fn is None:
            return distillation_error(out, ref)
        return float(loss_fn(out, batch).detach().double().mean())

    deltas = removal_losses(gm, removals, batches, _run, loss, progress=progress)
    cost, mean, se = measured_costs(deltas, margin)
    units = tuple(UnitCost(tuple(idx), float(cost[u]), float(mean[u]), float(se[u]),
                           float(taylor[idx].sum()), removals[u].structural)
                  for u, idx in enumerate(members))
    rough = sum(not r.structural for r in removals)
    below = int((mean < 0).sum())
    _say(progress, f"pruning cost: {len(members)} units x {len(batches)} batch(es) measured "
                   f"({rough} not structural, {below} below 0 priced 0)", t0)
    info = {"prune_batches": len(batches), "prune_margin": margin,
            "prune_units": len(members), "prune_not_structural": rough,
            "prune_below_zero": below, "prune_seconds": time.perf_counter() - t0}
    return _measured_column(subgroups, units, margin), units, info


def _objective(loss_fn: LossFn | None):
    """The loss ``fisher`` differentiates, as ``objective(outputs, batch, gen)``."""
    def objective(out: Any, batch: Any, gen: torch.Generator) -> torch.Tensor:
        return _distillation(out, gen) if loss_fn is None else loss_fn(out, batch)
    return objective


def _add_input_scores(gm: fx.GraphModule, subgroups: Sequence[Subgroup],
                      cands: Sequence[Candidate], sens: np.ndarray, calibration: Any,
                      loss_fn: LossFn | None, seed: int, space: SearchSpace,
                      progress: bool) -> dict:
    """Step 3's input part (module docstring), added to ``sens`` in place: a column of input
    ``a`` gets ``S_act(linear, a) * rows / out_features``; inf where the input cannot be
    scored. Returns {linear: {act: score}}."""
    if space.activations == ("fp",) or not any(c.act != "fp" for c in cands):
        return {}
    from lowbit.mixed_precision_acts import input_scores
    t0 = time.perf_counter()
    scores, _ = input_scores(gm, sorted({sg.linear for sg in subgroups}),
                                   space.activations, list(calibration), _run,
                                   _objective(loss_fn), seed=seed, progress=progress)
    for j, c in enumerate(cands):
        if c.act == "fp" or c.pruned:
            continue
        for i, sg in enumerate(subgroups):
            share = (sg.rows[1] - sg.rows[0]) / sg.out_features
            got = scores.get(sg.linear, {}).get(c.act)
            sens[i, j] = np.inf if got is None else sens[i, j] + got * share
    _say(progress, f"sensitivity: inputs of {len(scores)} linears "
                   f"({', '.join(a for a in space.activations if a != 'fp')})", t0)
    return scores


def sensitivity_table(gm: fx.GraphModule, *, calibration: Iterable[Any],
                      granularity=None, space: SearchSpace | None = None,
                      loss_fn: LossFn | None = None, roles: tuple[str, ...] = DEFAULT_ROLES,
                      ignore: tuple[str, ...] = (), seed: int = 0,
                      prune_cost: str = "measured", prune_batches: int | None = None,
                      prune_margin: float = 1.0, progress: bool = True) -> SensitivityTable:
    """Steps 1-3 of the module docstring (arguments as ``search_precision``)."""
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError(f"search_precision takes a captured fx.GraphModule (lowbit.capture), "
                          f"got {type(gm).__name__}")
    if prune_cost not in PRUNE_COSTS:
        raise ConfigError(f"prune_cost must be one of {PRUNE_COSTS}, got {prune_cost!r}")
    if prune_batches is not None and (isinstance(prune_batches, bool) or not isinstance(
            prune_batches, int) or prune_batches < 1):
        raise ConfigError(f"prune_batches must be None (all) or an int >= 1, got "
                          f"{prune_batches!r}")
    measured_price(0.0, 0.0, prune_margin)          # validates the margin
    granularity = WholeLinear() if granularity is None else granularity
    space = SearchSpace() if space is None else space
    subgroups = join_dead_linears(gm, list_subgroups(gm, granularity, roles=roles,
                                                     ignore=ignore))
    for sg in subgroups:
        space.check_width(sg.in_features, sg.linear)
    cands = space.candidates()
    measure = prune_cost == "measured" and any(c.pruned for c in cands)
    if measure:
        calibration = list(calibration)
    weights = list(dict.fromkeys(sg.weight for sg in subgroups))
    acc = fisher(gm, weights, calibration, loss_fn, seed=seed, progress=progress)
    params = dict(gm.named_parameters())
    sens = np.empty((len(subgroups), len(cands)))
    t0 = time.perf_counter()
    for w in progress_bar(weights, desc=f"sensitivity: {len(cands)} candidates",
                          unit="linear", enabled=progress):
        idx = [i for i, sg in enumerate(subgroups) if sg.weight == w]
        sg = subgroups[idx[0]]
        sens[idx] = candidate_scores(_as_out_in(params[w], sg), _as_out_in(acc.fisher(w), sg),
                                     [subgroups[i].rows for i in idx], cands, space, sg.linear)
    _say(progress, f"sensitivity: {len(cands)} candidates x {len(weights)} linears", t0)
    inputs = _add_input_scores(gm, subgroups, cands, sens, calibration, loss_fn, seed,
                               space, progress)
    nbytes = np.array([[total_bytes(sg.rows[1] - sg.rows[0], sg.in_features, c, space)
                        for c in cands] for sg in subgroups], dtype=np.int64)
    info = {"batches": acc.batches, "granularity": repr(granularity),
            "activations": list(space.activations),
            "loss": "distillation" if loss_fn is None else getattr(loss_fn, "__name__", "loss_fn"),
            "loss_terms": acc.terms / acc.batches if loss_fn is not None else None,
            "prune_cost": None}
    pruned = [c.pruned for c in cands]
    scores, units = {}, ()
    if any(pruned):
        scores["taylor"] = sens[:, pruned][:, 0].copy()
        info["prune_cost"] = "taylor"
    if measure:
        col, units, more = _measure_pruning(gm, subgroups, calibration[:prune_batches], loss_fn,
                                            space, scores["taylor"], prune_margin, progress)
        scores["measured"] = col
        sens[:, pruned] = col[:, None]
        info.update(prune_cost="measured", **more)
    return SensitivityTable(tuple(subgroups), cands, space, sens, nbytes, info, scores, units,
                            plan_links(gm, subgroups), inputs)


def plan_for_budget(table: SensitivityTable, budget: Budget | int, *, progress: bool = True
                    ) -> PrecisionPlan:
    """Step 4: the integer program on ``table`` under ``budget``; the plan it chooses."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        budget = Budget(bytes=budget)
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a lowbit.search.Budget or an int of bytes, got "
                          f"{budget!r} (average bits: Budget(avg_bits=...))")
    subgroups, cands, sens = table.subgroups, table.candidates, table.sensitivity
    limit = budget.to_bytes(table.elements)
    ties: dict[str, list[int]] = {}
    for i, sg in enumerate(subgroups):
        if sg.tie is not None:
            ties.setdefault(sg.tie, []).append(i)
    pruned = np.array([[c.pruned for c in cands]] * len(subgroups))
    option = np.array([[-1 if c.pruned else ACTIVATIONS.index(c.act) for c in cands]]
                      * len(subgroups))
    linears: dict[str, list[int]] = {}
    for i, sg in enumerate(subgroups):
        linears.setdefault(sg.linear, []).append(i)
    if budget.seconds is not None and table.latency is None:
        raise ConfigError("Budget(seconds=...) needs measured kernel times: "
                          "table.with_latency(lowbit.search.latency.measure_latency(...))")
    lat = table.latency if budget.seconds is not None else None
    t0 = time.perf_counter()
    sol = solve(sens, table.nbytes, limit, pruned=pruned,
                ties=[t for t in ties.values() if len(t) > 1],
                narrowings=narrowings(table.links, subgroups, cands, table.space, lat),
                shared=[g for g in linears.values() if len(g) > 1], option=option,
                latency=lat, latency_budget=budget.seconds,
                fixed=table.latency_fixed if lat is not None else ())
    took = "" if lat is None else f", {sol.latency * 1e3:.3f} of {budget.seconds * 1e3:.3f} ms"
    _say(progress, f"integer program: {sol.variables} binaries, {len(subgroups)} subgroups, "
                   f"HiGHS {sol.seconds * 1e3:.0f} ms, {sol.bytes:,} of {limit:,} bytes{took}",
         t0)
    entries = tuple(
        PlanEntry(sg.linear, sg.role, sg.rows, sg.in_features, sg.out_features, c.code, c.bits,
                  c.pruned, sg.tie, float(sens[i, col]), c.act)
        for i, (sg, col) in enumerate(zip(subgroups, sol.choice)) for c in [cands[col]])
    info = {"method": "taylor+ilp", "solver": "highs", "solve_seconds": sol.seconds,
            "binaries": sol.variables, "sensitivity": sol.sensitivity, **table.info}
    if lat is not None:
        info.update(latency_seconds=sol.latency, latency_budget=budget.seconds)
    plan = PrecisionPlan(entries, table.space, limit, info, table.links)
    if plan.total_bytes != sol.bytes:
        raise LowbitError(f"plan_for_budget: the solver counted {sol.bytes} bytes, the plan "
                          f"{plan.total_bytes} (a bug: please report)")
    return plan


def search_precision(gm: fx.GraphModule, budget: Budget | int, *,
                     calibration: Iterable[Any], granularity=None,
                     space: SearchSpace | None = None, loss_fn: LossFn | None = None,
                     roles: tuple[str, ...] = DEFAULT_ROLES, ignore: tuple[str, ...] = (),
                     seed: int = 0, prune_cost: str = "measured",
                     prune_batches: int | None = None, prune_margin: float = 1.0,
                     latency=None, latency_m: int | None = None,
                     progress: bool = True) -> PrecisionPlan:
    """The plan of least estimated loss increase within ``budget`` (module docstring);
    ``plan_for_budget(sensitivity_table(gm, ...), budget)``, which several budgets can share.

    Args:
        gm: a captured graph (``lowbit.capture``), float; not modified.
        budget: ``Budget(bytes=...)`` or ``Budget(avg_bits=...)`` over the searched weights'
            elements (scales and zero points count), or an int number of bytes.
        calibration: batches as ``gm`` takes them (dict, tuple or one tensor).
        granularity: ``WholeLinear()`` (None: the default), ``PerHead()``,
            ``PerNeurons(size)`` or a tuple of them.
        space: the candidates and how they are stored (None: ``SearchSpace()``).
        loss_fn: ``loss_fn(outputs, batch)`` -> per-term losses whose mean is the loss
            (``lm_token_losses``, per-example task losses) or a scalar (``lm_loss``: one term,
            ``lowbit.search.sensitivity`` says what that costs); None: the output-distillation
            estimate.
        roles, ignore: which linears (as recipes pick them).
        seed: of the random projections / signs of the Fisher estimate.
        prune_cost: how the pruned candidate is priced: "measured" (each pruning unit removed
            from the float graph, its loss increase measured: one forward per unit and
            batch) or "taylor" (``0.5 sum F W^2``: no forward, often off by several times).
        prune_batches: measure on the first this many calibration batches (None: all).
        prune_margin: standard errors (over those batches) added to each measured price,
            against the winner's curse (``lowbit.search.sensitivity``).
        latency, latency_m: kernel times for ``Budget(seconds=...)``: a
            ``lowbit.search.LatencyTable`` (``mixed_precision_latency.measure_latency``) read
            at ``latency_m`` tokens per call, or an array [subgroups, candidates] of seconds
            (``SensitivityTable.with_latency``).

    Raises:
        ConfigError: an infeasible budget (the message gives the smallest feasible size), a
            granularity or group that does not divide a linear.
        CalibrationError: no batches, or NaN/inf in a batch's loss or gradients (named).
    """
    if not isinstance(budget, (Budget, int)) or isinstance(budget, bool):
        raise ConfigError(f"budget must be a lowbit.search.Budget or an int of bytes, got "
                          f"{budget!r} (average bits: Budget(avg_bits=...))")
    table = sensitivity_table(gm, calibration=calibration, granularity=granularity, space=space,
                              loss_fn=loss_fn, roles=roles, ignore=ignore, seed=seed,
                              prune_cost=prune_cost, prune_batches=prune_batches,
                              prune_margin=prune_margin, progress=progress)
    if latency is not None:
        table = table.with_latency(latency, latency_m)
    return plan_for_budget(table, budget, progress=progress)
