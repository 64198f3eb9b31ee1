"""``lowbit.search_precision_dnas``: a mixed-precision, partly pruned plan found by a
differentiable search (issue 17 item 2; Zhao et al., IJCAI 2021), under a size budget.

    plan = search_precision_dnas(gm, Budget(avg_bits=4.25), calibration=batches,
                                 granularity=(PerHead(), PerNeurons(64)))
    plan = dnas_plan(gm, 0.05, calibration=batches)          # one search at a fixed lambda

1. subgroups and candidates as ``search_precision`` (``lowbit.passes.subgroups``, the
   ``SearchSpace``, pruned and fp included); every candidate's dequantized weight once;
2. a probe at lambda: logits [subgroups, candidates] from 0 (uniform), Adam on them
   (``lowbit.train.loop.Trainer``: one calibration batch per step, lr decaying linearly to 0);
   the graph runs through ``torch.func.functional_call`` with each searched weight replaced by
   the mixture ``W_eff`` (``lowbit.search.dnas``: math, temperature, expected bytes); loss =
   ``loss_fn(outputs, batch)`` or a distillation against the float graph: by default
   (``distillation="mse"``) the output error ``sum_o mean((o - o_fp)^2) / mean(o_fp^2)``, or
   (``distillation="kl"``, for language models) ``KL(softmax(o_fp) || softmax(o))`` of the first
   output's last dimension, in nats per position; + lambda * E[B] / B_fp32;
3. discretise (argmax, ties pruned together); for a budget, bisection over lambda
   (``dnas.bisect_lambda``, ``probes`` probes of ``steps`` steps at most).

``checkpoint=dir``: each probe's run (logits, Adam state, step, lambda, the settings) goes to
``dir/lambda-<lambda>-<hash of the settings>.pt`` atomically every ``checkpoint_every`` steps
and at its end (searches of other settings can share the folder); a rerun with the same arguments reuses finished probes and resumes the interrupted one, so it ends where
an uninterrupted run ends. The graph is not modified: its parameters enter detached, fine-tuned
weights (``finetune_weights=True``) are copies, used for the search and then dropped.

Device: the search runs where the graph's parameters are (a graph captured on a GPU searches
there: candidate stacks, logits, the float references and the calibration batches, moved
there, with it); the plan and the checkpoints are the same on any device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx
from torch.utils import _pytree

from lowbit.errors import CalibrationError, ConfigError
from lowbit.mixed_precision import LossFn, _as_out_in, _run, _say
from lowbit.mixed_precision_prune import plan_links
from lowbit.passes.subgroups import DEFAULT_ROLES, list_subgroups
from lowbit.search.cost import total_bytes
from lowbit.search.dnas import (
    bisect_lambda,
    candidate_stack,
    discretise,
    expected_bytes,
    mixture,
    temperature,
)
from lowbit.search.ilp import Budget, _check_budget, exact_bytes, least_bytes
from lowbit.search.plan import PlanEntry, PrecisionPlan, narrowings
from lowbit.search.space import SearchSpace, WholeLinear
from lowbit.train.loop import Group, LoopConfig, Trainer

__all__ = ["dnas_plan", "kl_distillation", "output_distillation", "search_precision_dnas"]


def output_distillation(outputs: Any, reference: Any) -> torch.Tensor:
    """``sum_o mean((o - r)^2) / mean(r^2)`` over the float outputs ``o`` and the float graph's
    ``r`` (the default DNAS loss; a relative error, so lambda's scale is the model's)."""
    total = None
    for o, r in zip(_pytree.tree_leaves(outputs), _pytree.tree_leaves(reference)):
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            term = (o.float() - r.float()).pow(2).mean() / r.float().pow(2).mean().clamp_min(1e-30)
            total = term if total is None else total + term
    if total is None:
        raise ConfigError("DNAS: the graph has no float output to distil (give loss_fn=)")
    return total


def kl_distillation(outputs: Any, reference: Any) -> torch.Tensor:
    """``mean_positions KL(softmax(r) || softmax(o))`` over the last dimension of the first
    float output ``o`` (a language model's logits) and the float graph's ``r``: the float
    model's next-token distribution distilled, in nats per position (``distillation="kl"``)."""
    o, r = (next((t for t in _pytree.tree_leaves(x)
                  if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
            for x in (outputs, reference))
    if o is None or r is None:
        raise ConfigError("DNAS: the graph has no float output to distil (give loss_fn=)")
    logp = torch.log_softmax(o.float(), dim=-1)
    logr = torch.log_softmax(r.float(), dim=-1)
    return (logr.exp() * (logr - logp)).sum(-1).mean()


_DISTILLATION = ("kl", "mse")


def _to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it on ``device``."""
    return _pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)


@dataclasses.dataclass(frozen=True)
class _Probe:
    lam: float
    choice: np.ndarray
    bytes: int
    loss: float


class _Supernet:
    """The graph, its searched weights' candidate stacks, the bytes table and the batches."""

    def __init__(self, gm: fx.GraphModule, calibration: Iterable[Any], loss_fn: LossFn | None,
                 granularity, space: SearchSpace, roles, ignore,
                 distillation: str = "mse") -> None:
        if not isinstance(gm, fx.GraphModule):
            raise ConfigError(f"search_precision_dnas takes a captured fx.GraphModule "
                              f"(lowbit.capture), got {type(gm).__name__}")
        if space.activations != ("fp",):
            raise ConfigError(f"search_precision_dnas searches weights only; the space's "
                              f"activations {space.activations} are searched by "
                              f"search_precision (integer program), or set per linear with "
                              f"PrecisionPlan.edit_activation")
        if distillation not in _DISTILLATION:
            raise ConfigError(f"distillation must be one of {_DISTILLATION}, got "
                              f"{distillation!r}")
        self.gm, self.loss_fn, self.space = gm, loss_fn, space
        self.distillation = distillation
        self.granularity = WholeLinear() if granularity is None else granularity
        self.subgroups = list_subgroups(gm, self.granularity, roles=roles, ignore=ignore)
        self.cands = space.candidates()
        params = dict(gm.named_parameters())
        self.device = next(iter(params.values())).device if params else torch.device("cpu")
        self.batches = [_to(b, self.device) for b in calibration]
        if not self.batches:
            raise CalibrationError("calibration data is empty: DNAS needs at least one batch")
        self.base = {n: p.detach() for n, p in params.items()}
        self.stacks, self.rows, self.w0 = {}, {}, {}
        for sg in self.subgroups:
            space.check_width(sg.in_features, sg.linear)
            if sg.weight not in params:
                raise ConfigError(f"DNAS: weight {sg.weight!r} is not a parameter of the graph")
            if sg.weight not in self.stacks:
                self.w0[sg.weight] = _as_out_in(params[sg.weight], sg)
                self.stacks[sg.weight] = candidate_stack(self.w0[sg.weight], self.cands, space,
                                                         sg.linear)
                self.rows[sg.weight] = (torch.empty(sg.out_features, dtype=torch.long,
                                                    device=self.device), sg)
        for i, sg in enumerate(self.subgroups):
            self.rows[sg.weight][0][sg.rows[0]:sg.rows[1]] = i
        self.nbytes = torch.tensor([[total_bytes(sg.rows[1] - sg.rows[0], sg.in_features, c,
                                                 space) for c in self.cands]
                                    for sg in self.subgroups], dtype=torch.float64)
        self.nbytes_dev = self.nbytes.to(self.device)
        self.elements = sum(sg.elements for sg in self.subgroups)
        self.pruned = np.array([c.pruned for c in self.cands])
        self.pruned_dev = torch.from_numpy(self.pruned).to(self.device)
        ties: dict[str, list[int]] = {}
        for i, sg in enumerate(self.subgroups):
            if sg.tie is not None:
                ties.setdefault(sg.tie, []).append(i)
        self.ties = [t for t in ties.values() if len(t) > 1]
        self.links = plan_links(gm, self.subgroups)
        self.narrowings = narrowings(self.links, self.subgroups, self.cands, space)
        self.refs = None
        if loss_fn is None:
            with torch.no_grad():
                self.refs = [_run(gm, b) for b in self.batches]

    def effective(self, logits: torch.Tensor, temp: float, tuned: dict | None) -> dict:
        """The graph's parameters with each searched weight replaced by ``W_eff``."""
        probs = torch.softmax(logits / temp, dim=-1)
        out = dict(self.base)
        for w, stack in self.stacks.items():
            row_sub, sg = self.rows[w]
            p_rows = probs[row_sub]
            eff = mixture(stack, p_rows)
            if tuned is not None:                    # straight through: Q(W) ~ Q(W0) + W - W0
                keep = 1 - p_rows[:, self.pruned_dev].sum(1, keepdim=True)
                eff = eff + keep * (tuned[w] - self.w0[w])
            out[w] = (eff if sg.layout == "out_in" else eff.t()).to(self.base[w].dtype)
        return out

    def loss(self, logits, step: int, lam: float, i: int, tuned, opts: dict) -> torch.Tensor:
        temp = temperature(step, opts["steps"], *opts["temperature"])
        batch = self.batches[i]
        args, kwargs = ((), batch) if isinstance(batch, dict) else (
            (tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)), {})
        out = torch.func.functional_call(self.gm, self.effective(logits, temp, tuned), args,
                                         kwargs)
        distil = output_distillation if self.distillation == "mse" else kl_distillation
        task = distil(out, self.refs[i]) if self.loss_fn is None else self.loss_fn(out, batch)
        return task + lam * expected_bytes(logits, self.nbytes_dev, temp) / (4 * self.elements)

    def probe(self, lam: float, opts: dict, checkpoint, progress: bool) -> _Probe:
        logits = torch.zeros(len(self.subgroups), len(self.cands), device=self.device)
        groups = [Group("logits", [("logits", logits)], lr=opts["lr"])]
        tuned = None
        if opts["finetune_weights"]:
            tuned = {w: w0.clone() for w, w0 in self.w0.items()}
            groups.append(Group("weights", list(tuned.items()), lr=opts["weight_lr"]))
        cfg = LoopConfig(steps=opts["steps"], batch_size=1, grad_clip=None, seed=opts["seed"],
                         log_every=max(1, opts["steps"] // 4),
                         checkpoint_every=opts["checkpoint_every"])
        fingerprint = {
            "lambda": lam, **{k: v for k, v in opts.items() if k != "checkpoint_every"},
            "space": self.space.to_dict(), "granularity": repr(self.granularity),
            "subgroups": len(self.subgroups), "batches": len(self.batches),
            **({} if self.distillation == "mse" else {"distillation": self.distillation})}
        trainer = Trainer(groups, cfg, label=f"DNAS lambda={lam:.3g}", fingerprint=fingerprint)
        path = None if checkpoint is None else Path(checkpoint) / _checkpoint_name(fingerprint)
        res = trainer.fit(lambda i: self.loss(logits, trainer.step, lam, i, tuned, opts),
                          list(range(len(self.batches))), lambda xs: xs[0], checkpoint=path,
                          progress=progress)
        choice = discretise(logits, self.pruned, self.ties)
        nbytes = exact_bytes(np.asarray(choice), self.nbytes.numpy().astype(np.int64),
                             np.broadcast_to(self.pruned, self.nbytes.shape), self.narrowings)
        return _Probe(lam, choice, nbytes, res.losses[-1] if res.losses else float("nan"))

    def plan(self, p: _Probe, budget: int | None, info: dict) -> PrecisionPlan:
        entries = tuple(PlanEntry(sg.linear, sg.role, sg.rows, sg.in_features, sg.out_features,
                                  c.code, c.bits, c.pruned, sg.tie)
                        for sg, col in zip(self.subgroups, p.choice) for c in [self.cands[col]])
        loss = ({"mse": "distillation", "kl": "kl-distillation"}[self.distillation]
                if self.loss_fn is None else getattr(self.loss_fn, "__name__", "loss_fn"))
        return PrecisionPlan(entries, self.space, budget, {
            "method": "dnas", "lambda": p.lam, "batches": len(self.batches),
            "granularity": repr(self.granularity), "loss": loss, "final_loss": p.loss, **info},
            self.links)


def _checkpoint_name(fingerprint: dict) -> str:
    """``lambda-<lambda>-<settings hash>.pt``: probes of other settings (another search space,
    step count, seed ...) sharing a folder never meet one another's checkpoint."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode())
    return f"lambda-{fingerprint['lambda']:.6e}-{digest.hexdigest()[:10]}.pt"


def _options(steps, lr, temp, finetune_weights, weight_lr, seed, checkpoint_every) -> dict:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
    if not (isinstance(temp, tuple) and len(temp) == 2 and all(t > 0 for t in temp)):
        raise ConfigError(f"temperature must be (start, end), both > 0, got {temp!r}")
    return {"steps": steps, "lr": float(lr), "temperature": tuple(map(float, temp)),
            "finetune_weights": bool(finetune_weights), "weight_lr": float(weight_lr),
            "seed": seed, "checkpoint_every": checkpoint_every}


def dnas_plan(gm: fx.GraphModule, lam: float, *, calibration: Iterable[Any],
              loss_fn: LossFn | None = None, granularity=None, space: SearchSpace | None = None,
              steps: int = 200, lr: float = 0.1, temperature: tuple[float, float] = (1.0, 0.1),
              finetune_weights: bool = False, weight_lr: float = 1e-5,
              roles: tuple[str, ...] = DEFAULT_ROLES, ignore: tuple[str, ...] = (),
              seed: int = 0, progress: bool = True, checkpoint=None,
              checkpoint_every: int = 50, distillation: str = "mse") -> PrecisionPlan:
    """One DNAS search at a fixed ``lam`` (steps 1-3 of the module docstring, no budget);
    arguments as ``search_precision_dnas``."""
    if not lam >= 0:
        raise ConfigError(f"lam must be >= 0, got {lam!r}")
    opts = _options(steps, lr, temperature, finetune_weights, weight_lr, seed, checkpoint_every)
    t0 = time.perf_counter()
    net = _Supernet(gm, calibration, loss_fn, granularity, space or SearchSpace(), roles, ignore,
                    distillation)
    p = net.probe(float(lam), opts, checkpoint, progress)
    _say(progress, f"DNAS lambda {lam:.3g}: {p.bytes:,} bytes", t0)
    return net.plan(p, None, {"seconds": time.perf_counter() - t0, **opts})


def search_precision_dnas(gm: fx.GraphModule, budget: Budget | int, *,
                          calibration: Iterable[Any], loss_fn: LossFn | None = None,
                          granularity=None, space: SearchSpace | None = None, steps: int = 200,
                          lr: float = 0.1, temperature: tuple[float, float] = (1.0, 0.1),
                          probes: int = 8, lambda_start: float = 1.0,
                          lambda_factor: float = 10.0,
                          finetune_weights: bool = False, weight_lr: float = 1e-5,
                          roles: tuple[str, ...] = DEFAULT_ROLES, ignore: tuple[str, ...] = (),
                          seed: int = 0, progress: bool = True, checkpoint=None,
                          checkpoint_every: int = 50,
                          distillation: str = "mse") -> PrecisionPlan:
    """The DNAS plan of most bytes within ``budget`` over ``probes`` lambda probes.

    Args (as ``search_precision`` for gm, budget, calibration, granularity, space, roles,
    ignore; ``calibration`` is read once into a list):
        loss_fn: ``loss_fn(outputs, batch) -> scalar``; None: a distillation against the
            float graph, ``distillation``: "mse" (``output_distillation``) or "kl"
            (``kl_distillation``, for language models' logits).
        steps, lr: Adam steps per probe and its initial learning rate on the logits.
        temperature: (start, end) of the exponential decay.
        probes, lambda_start, lambda_factor: the bisection (``lowbit.search.dnas.
            bisect_lambda``: its first step is x or / ``lambda_factor``).
        finetune_weights, weight_lr: also train copies of the float weights (straight
            through the quantizers); the plan is what is returned.
        seed: the batch order. checkpoint: a folder (module docstring).

    Raises:
        ConfigError: a budget below the smallest plan (before searching), or one no probe met
            (with the smallest size reached).
        TrainingError: NaN or inf in the loss (the step named).
    """
    if isinstance(budget, int) and not isinstance(budget, bool):
        budget = Budget(bytes=budget)
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a lowbit.search.Budget or an int of bytes, got "
                          f"{budget!r} (average bits: Budget(avg_bits=...))")
    opts = _options(steps, lr, temperature, finetune_weights, weight_lr, seed, checkpoint_every)
    t0 = time.perf_counter()
    net = _Supernet(gm, calibration, loss_fn, granularity, space or SearchSpace(), roles, ignore,
                    distillation)
    limit = budget.to_bytes(net.elements)
    nb = least_bytes(np.zeros(net.nbytes.shape), net.nbytes.numpy().astype(np.int64),
                     np.broadcast_to(net.pruned, net.nbytes.shape), net.narrowings)
    _check_budget(np.zeros(nb.shape), nb, np.broadcast_to(net.pruned, nb.shape), net.ties, limit)

    def probe(i: int, lam: float) -> _Probe:
        p = net.probe(lam, opts, checkpoint, progress)
        _say(progress, f"DNAS probe {i + 1}/{probes}: lambda {lam:.3g} -> {p.bytes:,} of "
                       f"{limit:,} bytes ({8 * p.bytes / net.elements:.2f} bits/weight)", t0)
        return p

    best, _, history = bisect_lambda(probe, limit, probes=probes, start=lambda_start,
                                     factor=lambda_factor)
    return net.plan(best, limit, {"probes": [list(h) for h in history],
                                  "seconds": time.perf_counter() - t0, **opts})
