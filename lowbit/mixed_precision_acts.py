"""The input side of ``lowbit.search_precision``: what quantizing a searched linear's input
costs, per input choice (``lowbit.search.space``: "fp", "fp16", "int8").

The weights' score is ``0.5 sum F (W - Q(W))^2`` with ``F = E[g_W^2]``; the input gets the same
second-order estimate on the activation instead of the weight, per batch (the input changes
with the batch, the weight does not)::

    S_act(linear, a) = mean_batches 0.5 sum_{tokens, k} g_x^2 (x - Q_a(x))^2

    x      the linear's input on that batch, g_x the gradient of the same objective the
           weight Fisher differentiates (``lowbit.mixed_precision.fisher``: the
           output-distillation surrogate, or ``loss_fn`` with random signs per term)
    Q_a    "fp16": x rounded to half; "int8": ``recipes.W8A8``'s static u8 per-tensor
           fake-quant, its range observed first over the same batches (``FakeQuantize``:
           the quantizer ``apply_precision`` calibrates), "fp": x (score 0)

Two passes over the calibration batches when "int8" is asked (observe, then gradients), one
otherwise. The graph is not modified: the inputs are tapped in a copy of its graph that shares
its parameters. Only linears whose input is the first argument of ``aten.linear`` /
``aten.matmul`` / ``aten.mm`` are tapped; the others get no score (their non-"fp" inputs are
not offered: NaN, the table marks them unavailable).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx

from lowbit.errors import CalibrationError
from lowbit.passes.spot import find_transformer
from lowbit.progress import bar as progress_bar
from lowbit.quant.fake_quant import FakeQuantize
from lowbit.recipes import W8A8
from lowbit.search.sensitivity import fisher_objective

__all__ = ["input_scores"]

aten = torch.ops.aten
_TAPPED = (aten.linear.default, aten.matmul.default, aten.mm.default)


class _Taps:
    """The inputs of the tapped linears during one forward: observed (pass 1) or made
    differentiable and kept (pass 2)."""

    def __init__(self, names: Sequence[str], int8: bool) -> None:
        self.quant = {n: FakeQuantize(W8A8.activation, f"{n}:input") for n in names} \
            if int8 else {}
        self.observe = False
        self.seen: dict[str, torch.Tensor] = {}

    def tap(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.observe:
            self.quant[name](x)
            return x
        if not x.requires_grad:
            x = x.detach().requires_grad_()
        self.seen[name] = x
        return x


def _tapped(gm: fx.GraphModule, nodes: dict[str, str], taps: _Taps) -> fx.GraphModule:
    """A GraphModule over a copy of ``gm``'s graph (``gm``'s parameters, shared) whose tapped
    linears (node name -> linear name) read their input through ``taps.tap``."""
    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.name in nodes:
            with graph.inserting_before(node):
                t = graph.call_function(taps.tap, (node.args[0], nodes[node.name]))
            node.replace_input_with(node.args[0], t)
    return fx.GraphModule(gm, graph)


def _linear_nodes(gm: fx.GraphModule, linears: Iterable[str]) -> dict[str, str]:
    """node name -> linear name, for the searched linears whose input can be tapped."""
    want = set(linears)
    tmap = find_transformer(gm)
    refs = [ref for b in tmap.blocks for _, ref in b.linears()]
    return {ref.node.name: ref.name for ref in refs
            if ref.name in want and getattr(ref.node, "target", None) in _TAPPED}


def _error(x: torch.Tensor, act: str, fq: FakeQuantize | None) -> torch.Tensor:
    if act == "fp16":
        return x - x.half().float()
    return x - fq(x)


def input_scores(gm: fx.GraphModule, linears: Sequence[str], acts: Sequence[str],
                 batches: Sequence[Any], run, objective, *, seed: int = 0,
                 progress: bool = True) -> tuple[dict[str, dict[str, float]], float]:
    """``S_act`` of the module docstring: {linear: {act: score}} for the tappable linears of
    ``linears`` ("fp": 0) and the seconds it took. ``run(gm, batch)`` runs a batch;
    ``objective(outputs, batch, gen)`` is the loss whose gradient the weight Fisher takes
    (before ``fisher_objective``)."""
    t0 = time.perf_counter()
    quantized = [a for a in acts if a != "fp"]
    nodes = _linear_nodes(gm, linears)
    scores = {name: {a: 0.0 for a in acts} for name in nodes.values()}
    if not quantized or not nodes:
        return scores, time.perf_counter() - t0
    taps = _Taps(list(nodes.values()), "int8" in quantized)
    rec = _tapped(gm, nodes, taps)
    if "int8" in quantized:
        taps.observe = True
        with torch.no_grad():
            for batch in progress_bar(batches, desc="sensitivity: input ranges", unit="batch",
                                      enabled=progress):
                run(rec, batch)
        for fq in taps.quant.values():
            fq.freeze()
        taps.observe = False
    gen = torch.Generator().manual_seed(seed + 1)
    params = dict(gm.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(False)
        for i, batch in enumerate(progress_bar(batches, desc="sensitivity: input gradients",
                                               unit="batch", enabled=progress)):
            taps.seen.clear()
            loss = objective(run(rec, batch), batch, gen)
            if not torch.isfinite(loss.detach()).all():
                raise CalibrationError(f"batch {i}: the loss is NaN or inf (input scores)")
            names = [n for n in scores if n in taps.seen]
            grads = torch.autograd.grad(fisher_objective(loss, gen),
                                        [taps.seen[n] for n in names], allow_unused=True)
            with torch.no_grad():
                for name, g in zip(names, grads):
                    if g is None:
                        continue
                    x = taps.seen[name].detach().float()
                    g2 = g.detach().float().pow(2)
                    for a in quantized:
                        err = _error(x, a, taps.quant.get(name))
                        scores[name][a] += 0.5 * float((g2 * err.pow(2)).sum())
            count += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if count == 0:
        raise CalibrationError("calibration data is empty: input scores need a batch")
    for per_act in scores.values():
        for a in quantized:
            per_act[a] /= count
    return scores, time.perf_counter() - t0
