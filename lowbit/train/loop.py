"""One training loop for lowbit's trainers (AlphaTuning) and the baselines they are compared
with (full fine-tuning, head-only, LoRA: benchmarks/alphatuning_sst2.py).

    trainer = Trainer([Group("alphas", named_params, lr=1e-3)], LoopConfig(steps=1000))
    result = trainer.fit(loss_fn, dataset, collate, checkpoint="run/ckpt.pt")

``loss_fn(batch) -> scalar loss``. Batches are drawn by step: step ``s`` takes examples
``perm_e[(s * b) % n ...]`` of a permutation seeded by ``(seed, epoch)``, so a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would. The optimizer is AdamW
with one parameter group per ``Group`` (its own lr and weight decay), a linear warmup and then
a linear decay to 0, gradient clipping over all groups. Checkpoints (every
``checkpoint_every`` steps and at the end) hold the step, the trained tensors, the optimizer
state and the config, written atomically (a temporary file, then ``os.replace``); ``fit``
resumes from an existing one and refuses one made with another config or for other
parameters. Progress goes to stderr every ``log_every`` steps; a NaN or inf loss stops the
run with a ``TrainingError``. Parameters of no group are the caller's to freeze.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, LowbitError
from lowbit.progress import bar as progress_bar
from lowbit.progress import drawing, say

__all__ = ["FitResult", "Group", "LoopConfig", "Trainer", "TrainingError"]


class TrainingError(LowbitError):
    """A training run that cannot go on (a NaN loss, a checkpoint of another run)."""


def _int(owner: str, v: Any, least: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ConfigError(f"{owner} must be an int >= {least}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000
    batch_size: int = 32
    grad_clip: float | None = 1.0
    warmup: int = 0                # linear warmup steps, then linear decay to 0
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for f in ("steps", "batch_size", "log_every", "checkpoint_every"):
            _int(f"{type(self).__name__}.{f}", getattr(self, f), 1)
        _int(f"{type(self).__name__}.warmup", self.warmup, 0)
        if self.warmup > self.steps:
            raise ConfigError(f"{type(self).__name__}.warmup ({self.warmup}) exceeds steps "
                              f"({self.steps})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"{type(self).__name__}.grad_clip must be > 0 or None, got "
                              f"{self.grad_clip!r}")


@dataclasses.dataclass
class Group:
    """Parameters trained together: ``(name, tensor)`` pairs, their lr and weight decay."""

    name: str
    params: list[tuple[str, torch.Tensor]]
    lr: float
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"group {self.name!r}: lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"group {self.name!r}: weight_decay must be >= 0, got "
                              f"{self.weight_decay!r}")


@dataclasses.dataclass
class FitResult:
    steps: int                 # the step the run ended at
    resumed_from: int          # 0 for a fresh run
    losses: list[float]        # the loss of every step this call ran
    seconds: float


class Trainer:
    """AdamW over ``groups`` with the loop of the module docstring."""

    def __init__(self, groups: Sequence[Group], config: LoopConfig, *, label: str = "train",
                 fingerprint: dict | None = None):
        self.groups, self.config, self.label = list(groups), config, label
        self.fingerprint = fingerprint if fingerprint is not None else dataclasses.asdict(config)
        for g in self.groups:
            for _, p in g.params:
                p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for _, p in g.params], "lr": g.lr, "weight_decay": g.weight_decay}
             for g in self.groups])
        self.step = 0

    def tensors(self) -> list[torch.Tensor]:
        return [p for g in self.groups for _, p in g.params]

    def names(self) -> list[str]:
        return [f"{g.name}:{n}" for g in self.groups for n, _ in g.params]

    def _schedule(self, step: int) -> float:
        c = self.config
        if c.warmup and step < c.warmup:
            return (step + 1) / c.warmup
        return max(0.0, (c.steps - step) / max(1, c.steps - c.warmup))

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the run's state to ``path`` atomically."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "config": self.fingerprint, "names": self.names(),
                 "tensors": [t.detach().cpu().clone() for t in self.tensors()],
                 "optimizer": self.optimizer.state_dict()}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load(self, path: str | os.PathLike) -> int:
        """Restore a checkpoint written by ``save`` for these parameters and config."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != self.fingerprint:
            raise TrainingError(f"checkpoint {path} was written with another config: "
                                f"{state['config']} (now {self.fingerprint})")
        if state["names"] != self.names() or any(
                a.shape != b.shape for a, b in zip(state["tensors"], self.tensors())):
            raise TrainingError(f"checkpoint {path} holds other parameters than this run's")
        with torch.no_grad():
            for t, saved in zip(self.tensors(), state["tensors"]):
                t.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        return self.step

    # ---- training ----------------------------------------------------------------------------
    def batch_indices(self, step: int, n: int) -> list[int]:
        """The example indices of ``step`` (a permutation per epoch, seeded by (seed, epoch))."""
        b = self.config.batch_size
        out, start = [], step * b
        while len(out) < b:
            epoch, pos = divmod(start + len(out), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(
                self.config.seed * 1_000_003 + epoch))
            out.extend(perm[pos:pos + b - len(out)].tolist())
        return out

    def fit(self, loss_fn: Callable[[Any], torch.Tensor], dataset: Sequence[Any],
            collate: Callable[[list[Any]], Any] = list, *,
            checkpoint: str | os.PathLike | None = None, progress: bool = True) -> FitResult:
        """Train to ``config.steps`` (resuming from ``checkpoint`` when it exists)."""
        if len(dataset) == 0:
            raise ConfigError(f"{self.label}: the dataset is empty")
        resumed = 0
        if checkpoint is not None and pathlib.Path(checkpoint).exists():
            resumed = self.load(checkpoint)
            say(f"{self.label}: resumed from {checkpoint} at step {resumed}", enabled=progress)
        c, losses, t0 = self.config, [], time.perf_counter()
        base = [g.lr for g in self.groups]
        params = self.tensors()
        # a terminal shows a bar (loss in its postfix) and the last line; a log gets a line
        # every log_every steps
        drawn = drawing(progress)
        with progress_bar(total=c.steps, desc=self.label, unit="step",
                          enabled=progress) as shown:
            shown.update(self.step)
            while self.step < c.steps:
                scale = self._schedule(self.step)
                for pg, lr in zip(self.optimizer.param_groups, base):
                    pg["lr"] = lr * scale
                idx = self.batch_indices(self.step, len(dataset))
                loss = loss_fn(collate([dataset[i] for i in idx]))
                if not torch.isfinite(loss):
                    lrs = ", ".join(f"{g.name} {g.lr}" for g in self.groups)
                    raise TrainingError(f"{self.label}: loss is {float(loss.detach())} at step "
                                        f"{self.step}; lower the learning rates ({lrs})")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, c.grad_clip)
                self.optimizer.step()
                self.step += 1
                losses.append(float(loss.detach()))
                shown.update()
                if progress and (self.step % c.log_every == 0 or self.step == c.steps):
                    dt = time.perf_counter() - t0
                    eta = dt / (self.step - resumed) * (c.steps - self.step)
                    recent = sum(losses[-c.log_every:]) / len(losses[-c.log_every:])
                    shown.set_postfix_str(f"loss {recent:.4f}")
                    if self.step == c.steps or not drawn:
                        say(f"{self.label} step {self.step}/{c.steps}  loss {recent:.4f}  "
                            f"{dt:.0f} s, eta {eta:.0f} s")
                if checkpoint is not None and (self.step % c.checkpoint_every == 0
                                               or self.step == c.steps):
                    self.save(checkpoint)
        for pg, lr in zip(self.optimizer.param_groups, base):
            pg["lr"] = lr
        return FitResult(self.step, resumed, losses, time.perf_counter() - t0)
