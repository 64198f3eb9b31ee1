"""Quadapter training: learn the channel scales ``a`` of a graph's scale pairs, weights frozen.

    phase 1  L1 = mean_b |T_b(x) - F_b(x)|^2 / mean |F_b(x)|^2     over block outputs b
    phase 2  L2 = mean |T(x) - F(x)|^2 / mean |F(x)|^2             on the first model output

F is the float graph, T the Quadapter training graph (``InsertQuadapter``: ``Q(y / a)`` into
linears with ``Q(W diag(a))``). Only ``log a`` is trained (Adam); every other parameter is
frozen. Simplification, stated: phase 1 compares block outputs of one end-to-end pass of T
(its blocks see T's own inputs, not the float block inputs of strict block-wise
reconstruction). ``train_quadapter`` writes the trained ``a`` back into the pair graph, which
``FoldChannelScales`` then folds like SmoothQuant's pairs.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from lowbit.config import Recipe
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.fx.quadapter import LOG_SUFFIX, InsertQuadapter
from lowbit.passes.reports import scale_name
from lowbit.progress import bar as progress_bar
from lowbit.progress import drawing, say
from lowbit.warning_filters import copy_graph

__all__ = ["QuadapterConfig", "block_outputs", "scales_by_linear", "train_quadapter"]


@dataclasses.dataclass(frozen=True)
class QuadapterConfig:
    phase1_steps: int = 100
    phase2_steps: int = 100
    lr: float = 1e-2
    seed: int = 0
    log_every: int = 25

    def __post_init__(self):
        for f in ("phase1_steps", "phase2_steps", "log_every"):
            if getattr(self, f) < 0:
                raise ConfigError(f"QuadapterConfig.{f} must be >= 0, got {getattr(self, f)}")
        if not self.lr > 0:
            raise ConfigError(f"QuadapterConfig.lr must be > 0, got {self.lr}")


def block_outputs(gm: fx.GraphModule) -> list[str]:
    """Names of the nodes carrying each block's output on the residual stream (read the map
    on the float graph: node names survive copies and pair insertion)."""
    from lowbit.passes.fx.spot import find_transformer

    out = []
    for b in find_transformer(gm).blocks:
        node = b.ffn_norm.node if b.style == "post-ln" and b.ffn_norm else (
            b.residual_adds[-1] if b.residual_adds else None)
        if node is not None:
            out.append(node.name)
    return out


class _Tap(nn.Module):
    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        self.value = x
        return x


def _tapped(gm: fx.GraphModule, names: Sequence[str]) -> tuple[fx.GraphModule, list[_Tap]]:
    nodes = {n.name: n for n in gm.graph.nodes}
    taps = []
    for i, name in enumerate(names):
        if name not in nodes:
            raise ConfigError(f"train_quadapter: block output {name!r} is not in the graph")
        tap = _Tap()
        gm.add_submodule(f"lowbit_tap_{i}", tap)
        with gm.graph.inserting_after(nodes[name]):
            gm.graph.call_module(f"lowbit_tap_{i}", (nodes[name],))
        taps.append(tap)
    gm.recompile()
    return gm, taps


def _run(gm: nn.Module, batch: Any) -> torch.Tensor:
    out = gm(**batch) if isinstance(batch, dict) else gm(*batch) if isinstance(
        batch, (tuple, list)) else gm(batch)
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
    return out


def _nmse(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (t - f).pow(2).mean() / f.pow(2).mean().clamp_min(1e-12)


def train_quadapter(pairs: fx.GraphModule, fp: fx.GraphModule, batches: Iterable[Any],
                    recipe: Recipe, config: QuadapterConfig = QuadapterConfig(), *,
                    blocks: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Train the scales of ``pairs`` (a graph with scale pairs, e.g. from SmoothQuantScales)
    against the float graph ``fp``; writes the trained ``a`` into ``pairs`` in place and
    returns {"loss1": [...], "loss2": [...], "seconds": s}."""
    if recipe.weight is None or recipe.activation is None:
        raise ConfigError(f"train_quadapter: recipe {recipe.name} needs weight and activation "
                          f"specs")
    data = list(batches)
    if not data:
        raise CalibrationError("train_quadapter: no training batches")
    blocks = list(blocks if blocks is not None else block_outputs(fp))
    train, taps_t = _tapped(copy_graph(pairs), blocks)
    if not InsertQuadapter(recipe.weight, recipe.activation)(train).modified:
        raise ConfigError("train_quadapter: the graph has no scale pairs to train")
    teacher, taps_f = _tapped(copy_graph(fp), blocks)
    logs = {n: p for n, p in train.named_parameters() if n.endswith(LOG_SUFFIX)}
    for n, p in train.named_parameters():
        p.requires_grad_(n in logs)
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(logs.values(), lr=config.lr)
    hist: dict[str, list] = {"loss1": [], "loss2": []}
    t0 = time.perf_counter()
    total = config.phase1_steps + config.phase2_steps
    drawn = drawing(progress)
    shown = progress_bar(zip(range(total), itertools.cycle(data)), total=total,
                         desc="quadapter", unit="step", enabled=progress)
    for step, batch in shown:
        phase = 1 if step < config.phase1_steps else 2
        with torch.no_grad():
            f_out = _run(teacher, batch)
            f_blocks = [t.value for t in taps_f]
        t_out = _run(train, batch)
        if phase == 1 and blocks:
            loss = torch.stack([_nmse(t.value, f) for t, f in zip(taps_t, f_blocks)]).mean()
        else:
            loss = _nmse(t_out, f_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist[f"loss{phase}"].append(float(loss.detach()))
        if progress and config.log_every and (step + 1) % config.log_every == 0:
            shown.set_postfix_str(f"phase {phase}, loss {hist[f'loss{phase}'][-1]:.4g}")
            if not drawn:               # a log gets a line every log_every steps
                say(f"quadapter phase {phase} step {step + 1}/{total}: "
                    f"loss {hist[f'loss{phase}'][-1]:.4g} ({time.perf_counter() - t0:.1f} s)")
    if drawn:                           # a terminal: the bar, then one line
        last = hist["loss2"] or hist["loss1"]
        say(f"quadapter: {total} steps, last loss {last[-1] if last else float('nan'):.4g} "
            f"({time.perf_counter() - t0:.1f} s)")
    with torch.no_grad():
        for n, p in logs.items():
            pairs.get_parameter(n.removesuffix(LOG_SUFFIX)).copy_(p.exp())
    hist["seconds"] = time.perf_counter() - t0
    return hist


def scales_by_linear(pairs: fx.GraphModule, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The pair scales of ``pairs`` keyed by the linear each pair was named after (the form
    ``SmoothQuantScales(scales=...)`` takes, e.g. to place trained scales after ``prepare``)."""
    params = dict(pairs.named_parameters())
    return {n: params[scale_name(n)].detach().clone() for n in names if scale_name(n) in params}
