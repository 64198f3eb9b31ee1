"""Layer-by-layer distillation of a compressed graph from its uncompressed original (Yang et al.
2023, for tensor-train layers; it works for any student graph whose blocks keep the teacher's
node names, as the passes' outputs do).

    teacher = lowbit.capture(model, example)                 # the uncompressed model
    student = lowbit.tensor_train(teacher, TT(ranks=30, bits=8))
    distiller = LayerwiseDistiller(teacher, student, DistillConfig(steps=200, lr=1e-3))
    results = distiller.fit(dataset, collate, checkpoint_dir="run/")      # one stage per block

Stage ``i`` trains only block ``i``'s parameters (by default the TT cores and scales of its
linears: names ``<linear>.tt_*``) so that the student's output of block ``i`` matches the
teacher's on the same batch: loss ``mean((s - t)^2) / mean(t^2)``. Both graphs run only up to
that block (a view of the graph whose output is the block's output node; the parameters are
shared with the student, so training the view trains the student). Blocks run in order, each
starting from the blocks before it as trained. The loop of every stage is
``lowbit.train.loop.Trainer`` (AdamW, warmup + linear decay, progress, a NaN stops the run), and
each stage's checkpoint (``<checkpoint_dir>/block<i>.pt``, written atomically) lets an
interrupted run resume: finished stages are restored from theirs, not trained again.

The end-to-end task stage that follows is an ordinary ``Trainer`` over ``student_parameters``
(and a task head) with the caller's loss.

Block outputs come from spotting the teacher (``lowbit.passes.spot.find_transformer``): the norm
after the FFN residual in a post-LN block (BERT), the FFN residual add otherwise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from lowbit.errors import ConfigError
from lowbit.train.loop import FitResult, Group, LoopConfig, Trainer

__all__ = ["DistillConfig", "LayerwiseDistiller", "Stage", "block_stages", "output_view",
           "student_parameters"]

TT_PATTERN = "*.tt_*"          # TT cores (tt_core<k>) and their quantizers' scales (tt_quant<k>)


@dataclasses.dataclass(frozen=True)
class DistillConfig(LoopConfig):
    """One stage's loop (``LoopConfig``: steps, batch size, warmup, ...) and its lr."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr > 0:
            raise ConfigError(f"DistillConfig.lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"DistillConfig.weight_decay must be >= 0, got "
                              f"{self.weight_decay!r}")


@dataclasses.dataclass(frozen=True)
class Stage:
    """Block ``index``: its output node's name and the parameter names it trains."""

    index: int
    output: str
    params: tuple[str, ...]


def student_parameters(student: nn.Module, pattern: str = TT_PATTERN
                       ) -> list[tuple[str, nn.Parameter]]:
    """The student's parameters whose names match ``pattern`` (fnmatch; default: TT ones)."""
    return [(n, p) for n, p in student.named_parameters() if fnmatch.fnmatch(n, pattern)]


def _block_output(block: Any) -> Any:
    if block.style == "post-ln" and block.ffn_norm is not None:
        return block.ffn_norm.node
    if block.residual_adds:
        return block.residual_adds[-1]
    raise ConfigError(f"block {block.index}: no residual add after its FFN was found, so its "
                      f"output is unknown; pass stages= explicitly")


def block_stages(teacher: fx.GraphModule, student: nn.Module, pattern: str = TT_PATTERN
                 ) -> list[Stage]:
    """One stage per block of ``teacher`` with the ``pattern`` parameters of the student that
    belong to that block's linears (blocks with none are left out)."""
    from lowbit.passes.spot import find_transformer

    tmap = find_transformer(teacher)
    if not tmap.blocks:
        raise ConfigError("LayerwiseDistiller: no transformer block found in the teacher graph "
                          f"({len(tmap.unclassified)} unclassified op(s)); pass stages= "
                          "explicitly")
    named = [n for n, _ in student_parameters(student, pattern)]
    stages = []
    for b in tmap.blocks:
        owners = tuple(f"{ref.name}." for _, ref in b.linears())
        params = tuple(n for n in named if n.startswith(owners))
        if params:
            stages.append(Stage(b.index, _block_output(b).name, params))
    if not stages:
        raise ConfigError(f"LayerwiseDistiller: no student parameter matches {pattern!r} in "
                          f"any block's linears (did the compression pass run?)")
    return stages


def output_view(gm: fx.GraphModule, node_name: str) -> fx.GraphModule:
    """A GraphModule computing only ``node_name`` of ``gm`` (the rest is dead code), sharing
    ``gm``'s parameters and submodules."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    found = None
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n.name == node_name:
            found = env[n]
    if found is None:
        raise ConfigError(f"output_view: no node {node_name!r} in the graph")
    graph.output(found)
    view = fx.GraphModule(gm, graph)
    # dropout and sdpa count as impure (random) by default; in an eval graph they are not
    view.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure(impure_random=False))
    view.recompile()
    view.meta = dict(getattr(gm, "meta", {}))
    return view


def _call(module: nn.Module, batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


class LayerwiseDistiller:
    """Train ``student`` block by block to match ``teacher`` (module docstring).

    ``stages``: the blocks and the parameters each trains (default ``block_stages``);
    ``run(module, batch)``: how a graph is called on a batch (default: ``**batch`` for a dict,
    ``*batch`` for a tuple, else one input)."""

    def __init__(self, teacher: fx.GraphModule, student: fx.GraphModule,
                 config: DistillConfig = DistillConfig(), *,
                 stages: Sequence[Stage] | None = None,
                 run: Callable[[nn.Module, Any], torch.Tensor] = _call):
        if not isinstance(config, DistillConfig):
            raise ConfigError(f"LayerwiseDistiller: config must be a DistillConfig, got "
                              f"{type(config).__name__}")
        self.teacher, self.student, self.config, self.run = teacher, student, config, run
        self.stages = list(stages) if stages is not None else block_stages(teacher, student)
        params = dict(student.named_parameters())
        for s in self.stages:
            missing = [n for n in s.params if n not in params]
            if missing:
                raise ConfigError(f"stage {s.index}: the student has no parameter(s) {missing}")

    def loss(self, stage: Stage, s_view: nn.Module, t_view: nn.Module, batch: Any
             ) -> torch.Tensor:
        with torch.no_grad():
            t = self.run(t_view, batch)
        s = self.run(s_view, batch)
        if s.shape != t.shape:
            raise ConfigError(f"stage {stage.index}: student output {tuple(s.shape)} and teacher "
                              f"output {tuple(t.shape)} of {stage.output!r} differ")
        return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)

    def fit(self, dataset: Sequence[Any], collate: Callable[[list[Any]], Any] = list, *,
            checkpoint_dir: str | os.PathLike | None = None, progress: bool = True
            ) -> list[FitResult]:
        """Run every stage in order; returns one ``FitResult`` per stage."""
        params = dict(self.student.named_parameters())
        frozen = {n: p.requires_grad for n, p in params.items()}
        results = []
        try:
            for p in params.values():
                p.requires_grad_(False)
            for st in self.stages:
                s_view = output_view(self.student, st.output)
                t_view = output_view(self.teacher, st.output)
                group = Group(f"block{st.index}", [(n, params[n]) for n in st.params],
                              lr=self.config.lr, weight_decay=self.config.weight_decay)
                trainer = Trainer([group], self.config,
                                  label=f"distill block {st.index}/{len(self.stages)}")
                ckpt = (pathlib.Path(checkpoint_dir) / f"block{st.index}.pt"
                        if checkpoint_dir is not None else None)
                results.append(trainer.fit(
                    lambda b, st=st, s=s_view, t=t_view: self.loss(st, s, t, b),
                    dataset, collate, checkpoint=ckpt, progress=progress))
                for n in st.params:
                    params[n].requires_grad_(False)
        finally:
            for n, p in params.items():
                p.requires_grad_(frozen[n])
        return results
