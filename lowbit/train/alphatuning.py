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
The loop (batch order by step, AdamW, warmup + linear decay, atomic resumable checkpoints,
progress, NaN stop) is ``lowbit.train.loop.Trainer``, with two groups: the alphas (no weight
decay, so with ``alphas="first"`` the masked alphas keep their exact values: a zero gradient
gives a zero Adam step) and the head (``head_weight_decay``). The planes are buffers, never trained: ``planes_digest`` hashes them
so a caller (or test) can check they are bit-identical after training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.train.loop import FitResult, Group, LoopConfig, Trainer, TrainingError

__all__ = ["ALPHA_SUFFIX", "AlphaTuner", "AlphaTuningConfig", "FitResult", "TrainingError",
           "alpha_parameters", "planes_digest"]

ALPHA_SUFFIX, PLANES_SUFFIX = "bcq_alpha", "bcq_planes"


@dataclasses.dataclass(frozen=True)
class AlphaTuningConfig(LoopConfig):
    lr: float = 1e-3               # alphas
    head_lr: float = 1e-3
    head_weight_decay: float = 0.0
    alphas: str = "all"            # "all" | "first" (the paper's alpha_1 only)

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("lr", "head_lr"):
            if not getattr(self, f) > 0:
                raise ConfigError(f"AlphaTuningConfig.{f} must be > 0, got {getattr(self, f)!r}")
        if self.alphas not in ("all", "first"):
            raise ConfigError(f"AlphaTuningConfig.alphas must be 'all' or 'first', got "
                              f"{self.alphas!r}")


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
        self.trainer = Trainer(           # sets requires_grad on its groups
            [Group("alphas", self.alphas, config.lr),
             Group("head", [(str(i), p) for i, p in enumerate(self.head)], config.head_lr,
                   config.head_weight_decay)],
            config, label="AlphaTuning")
        self.hooks = [p.register_hook(_first_only) for _, p in self.alphas
                      if config.alphas == "first"]

    def counts(self) -> dict[str, int]:
        """Trainable parameter counts: alphas (only alpha_1 with ``alphas="first"``), head, and
        the model's total parameters (planes are buffers, not counted) for comparison."""
        alpha = sum(p.numel() // (p.shape[-1] if self.config.alphas == "first" else 1)
                    for _, p in self.alphas)
        head = sum(p.numel() for p in self.head)
        model_ids = {id(p) for p in self.model.parameters()}
        total = sum(p.numel() for p in self.model.parameters()) + sum(
            p.numel() for p in self.head if id(p) not in model_ids)
        return {"alpha": alpha, "head": head, "trainable": alpha + head, "model_parameters": total}

    def fit(self, loss_fn: Callable[[Any], torch.Tensor], dataset: Sequence[Any],
            collate: Callable[[list[Any]], Any] = list, *,
            checkpoint: str | os.PathLike | None = None, progress: bool = True) -> FitResult:
        """Train to ``config.steps`` (``Trainer.fit``: resumes from ``checkpoint``)."""
        return self.trainer.fit(loss_fn, dataset, collate, checkpoint=checkpoint,
                                progress=progress)
