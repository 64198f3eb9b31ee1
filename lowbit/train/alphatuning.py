"""AlphaTuning (Kwon et al., EMNLP Findings 2022): fine-tune only the BCQ scale factors.

A model quantized with a BCQ recipe (``lowbit.quantize(model, recipes.W3_BCQ, ...)``) holds,
per linear, frozen binary planes ``B`` and scales ``alpha`` [N, G, q] (``lowbit::bcq_linear``).
AlphaTuning freezes the planes and every other parameter of the model and trains

    the alphas:  all q of them per (row, group) (``alphas="all"``), or only the first, largest
                 one, as the paper does (``alphas="first"``: the others get no gradient);
    a task head: any parameters the caller names (a new classifier, say), trained with them.

    tuner = AlphaTuner(model, head_params=head.parameters(), config=AlphaTuningConfig(...))
    tuner.counts()                         # trainable vs total parameters
    result = tuner.fit(loss_fn, dataset, collate, checkpoint="run/ckpt.pt")

``loss_fn(batch) -> scalar loss`` runs the model (the caller closes over it and the head).
Batches are drawn by step: step ``s`` takes examples ``perm_e[(s * b) % n ...]`` of a
permutation seeded by ``(seed, epoch)``, so a run resumed from a checkpoint sees exactly the
batches an uninterrupted run would. Checkpoints (``checkpoint_every`` steps and at the end)
hold the step, the trainable tensors, the optimizer state and the config, and are written
atomically (a temporary file, then ``os.replace``); ``fit`` resumes from an existing one
(refusing one made with another config or for other parameters). Progress goes to stderr
every ``log_every`` steps; a NaN or inf loss stops the run with a ``TrainingError``.

The optimizer is Adam(W) with two groups: alphas (no weight decay, so with ``alphas="first"``
the masked alphas keep their exact values: zero gradient gives a zero Adam step) and the head
(``head_weight_decay``). The planes are buffers, never trained: ``planes_digest`` hashes them
so a caller (or test) can check they are bit-identical after training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, LowbitError

__all__ = ["ALPHA_SUFFIX", "AlphaTuner", "AlphaTuningConfig", "FitResult", "TrainingError",
           "alpha_parameters", "planes_digest"]

ALPHA_SUFFIX, PLANES_SUFFIX = "bcq_alpha", "bcq_planes"


class TrainingError(LowbitError):
    """A training run that cannot go on (a NaN loss, a checkpoint of another run)."""


@dataclasses.dataclass(frozen=True)
class AlphaTuningConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3               # alphas
    head_lr: float = 1e-3
    head_weight_decay: float = 0.0
    alphas: str = "all"            # "all" | "first" (the paper's alpha_1 only)
    grad_clip: float | None = 1.0
    warmup: int = 0                # linear warmup steps, then linear decay to 0
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for f in ("steps", "batch_size", "log_every", "checkpoint_every"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"AlphaTuningConfig.{f} must be an int >= 1, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or \
                not 0 <= self.warmup <= self.steps:
            raise ConfigError(f"AlphaTuningConfig.warmup must be an int in 0..steps, got "
                              f"{self.warmup!r}")
        for f in ("lr", "head_lr"):
            if not getattr(self, f) > 0:
                raise ConfigError(f"AlphaTuningConfig.{f} must be > 0, got {getattr(self, f)!r}")
        if self.head_weight_decay < 0:
            raise ConfigError(f"AlphaTuningConfig.head_weight_decay must be >= 0, got "
                              f"{self.head_weight_decay!r}")
        if self.alphas not in ("all", "first"):
            raise ConfigError(f"AlphaTuningConfig.alphas must be 'all' or 'first', got "
                              f"{self.alphas!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"AlphaTuningConfig.grad_clip must be > 0 or None, got "
                              f"{self.grad_clip!r}")


def alpha_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The BCQ alphas of ``model`` (parameters named ``*.bcq_alpha``), by name."""
    return [(n, p) for n, p in model.named_parameters(remove_duplicate=True)
            if n.rsplit(".", 1)[-1].startswith(ALPHA_SUFFIX)]


def planes_digest(model: nn.Module) -> str:
    """sha256 over every BCQ plane buffer of ``model`` (names and bytes, sorted by name)."""
    h = hashlib.sha256()
    for name, buf in sorted(model.named_buffers()):
        if name.rsplit(".", 1)[-1].startswith(PLANES_SUFFIX):
            h.update(name.encode())
            h.update(buf.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class FitResult:
    steps: int                 # the step the run ended at
    resumed_from: int          # 0 for a fresh run
    losses: list[float]        # the loss of every step this call ran
    seconds: float


def _first_only(grad: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(grad)
    mask[..., 0] = 1
    return grad * mask


class AlphaTuner:
    """Freezes ``model`` but its alphas (and ``head_params``), and trains them (module doc)."""

    def __init__(self, model: nn.Module, head_params: Iterable[nn.Parameter] = (),
                 config: AlphaTuningConfig = AlphaTuningConfig()):
        if not isinstance(config, AlphaTuningConfig):
            raise ConfigError(f"config must be an AlphaTuningConfig, got {type(config).__name__}")
        self.model, self.config = model, config
        self.alphas = alpha_parameters(model)
        if not self.alphas:
            raise ConfigError("AlphaTuning needs a BCQ-quantized model (lowbit.quantize with a "
                              "BCQ recipe, e.g. recipes.W3_BCQ): no *.bcq_alpha parameter found")
        alpha_ids = {id(p) for _, p in self.alphas}
        self.head = [p for p in dict.fromkeys(head_params) if id(p) not in alpha_ids]
        for p in model.parameters():
            p.requires_grad_(False)
        for _, p in self.alphas:
            p.requires_grad_(True)
            if config.alphas == "first":
                p.register_hook(_first_only)
        for p in self.head:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for _, p in self.alphas], "lr": config.lr, "weight_decay": 0.0},
             {"params": self.head, "lr": config.head_lr,
              "weight_decay": config.head_weight_decay}])
        self.step = 0

    # ---- bookkeeping -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Trainable parameter counts: alphas (only alpha_1 with ``alphas="first"``), head, and
        the model's total parameters and buffers (planes included) for comparison."""
        alpha = sum(p.numel() // (p.shape[-1] if self.config.alphas == "first" else 1)
                    for _, p in self.alphas)
        head = sum(p.numel() for p in self.head)
        total = sum(p.numel() for p in self.model.parameters()) + sum(
            p.numel() for p in self.head if not any(p is q for q in self.model.parameters()))
        return {"alpha": alpha, "head": head, "trainable": alpha + head, "model_parameters": total}

    def _schedule(self, step: int) -> float:
        c = self.config
        if c.warmup and step < c.warmup:
            return (step + 1) / c.warmup
        return max(0.0, (c.steps - step) / max(1, c.steps - c.warmup))

    def _names(self) -> list[str]:
        return [n for n, _ in self.alphas] + [f"head.{i}" for i in range(len(self.head))]

    def _tensors(self) -> list[torch.Tensor]:
        return [p for _, p in self.alphas] + self.head

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the run's state to ``path`` atomically."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "config": dataclasses.asdict(self.config),
                 "names": self._names(),
                 "tensors": [t.detach().cpu().clone() for t in self._tensors()],
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
        """Restore a checkpoint written by ``save`` for this model and config; returns its step."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != dataclasses.asdict(self.config):
            raise TrainingError(f"checkpoint {path} was written with another config: "
                                f"{state['config']} (now {dataclasses.asdict(self.config)})")
        if state["names"] != self._names() or any(
                a.shape != b.shape for a, b in zip(state["tensors"], self._tensors())):
            raise TrainingError(f"checkpoint {path} holds other parameters than this model's "
                                f"alphas and head")
        with torch.no_grad():
            for t, saved in zip(self._tensors(), state["tensors"]):
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
            raise ConfigError("AlphaTuning: the dataset is empty")
        resumed = 0
        if checkpoint is not None and pathlib.Path(checkpoint).exists():
            resumed = self.load(checkpoint)
            if progress:
                print(f"[lowbit] AlphaTuning: resumed from {checkpoint} at step {resumed}",
                      file=sys.stderr, flush=True)
        c, losses, t0 = self.config, [], time.perf_counter()
        base = [c.lr, c.head_lr]
        while self.step < c.steps:
            scale = self._schedule(self.step)
            for g, lr in zip(self.optimizer.param_groups, base):
                g["lr"] = lr * scale
            batch = collate([dataset[i] for i in self.batch_indices(self.step, len(dataset))])
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"AlphaTuning: loss is {float(loss)} at step {self.step}; "
                                    f"lower the learning rate (lr={c.lr}, head_lr={c.head_lr})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip is not None:
                nn.utils.clip_grad_norm_(self._tensors(), c.grad_clip)
            self.optimizer.step()
            self.step += 1
            losses.append(float(loss.detach()))
            if progress and (self.step % c.log_every == 0 or self.step == c.steps):
                dt = time.perf_counter() - t0
                done = self.step - resumed
                eta = dt / done * (c.steps - self.step)
                recent = losses[-c.log_every:]
                print(f"[lowbit] AlphaTuning step {self.step}/{c.steps}  loss "
                      f"{sum(recent) / len(recent):.4f}  {dt:.0f} s, eta {eta:.0f} s",
                      file=sys.stderr, flush=True)
            if checkpoint is not None and (self.step % c.checkpoint_every == 0
                                           or self.step == c.steps):
                self.save(checkpoint)
        for g, lr in zip(self.optimizer.param_groups, base):
            g["lr"] = lr
        return FitResult(self.step, resumed, losses, time.perf_counter() - t0)

