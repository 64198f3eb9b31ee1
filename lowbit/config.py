"""Frozen, self-validating configs: quantization specs, observers and recipes.

Granularity is a type (``PerChannel(axis=0)``, ``PerGroup(size=128)``), never a string; every
``__post_init__`` says which field is wrong and what was given.
"""

from __future__ import annotations

import dataclasses
from typing import Union

from lowbit.errors import ConfigError
from lowbit.roles import LINEAR_ROLES

__all__ = [
    "PerTensor", "PerChannel", "PerGroup", "PerToken", "PerEmbeddingGroup", "Granularity",
    "MinMax", "MovingAverage", "Percentile", "MSE", "Observer",
    "QuantSpec", "BCQ", "WeightSpec", "Recipe",
]


def _check(cond: bool, owner: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{owner}: {msg}")


def _pow2(v: object, least: int) -> bool:
    return isinstance(v, int) and v >= least and v & (v - 1) == 0


# ---- granularity ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor."""


@dataclasses.dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis`` (weights: axis 0 = output channels)."""

    axis: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.axis, int), "PerChannel.axis", f"must be an int, got {self.axis!r}")


@dataclasses.dataclass(frozen=True)
class PerGroup:
    """One scale per output channel and per ``size`` consecutive input channels (weights)."""

    size: int = 128

    def __post_init__(self) -> None:
        _check(_pow2(self.size, 2),
               "PerGroup.size", f"must be a power of two >= 2, got {self.size!r}")


@dataclasses.dataclass(frozen=True)
class PerToken:
    """Activations: one scale per token (row), computed at run time (dynamic)."""


@dataclasses.dataclass(frozen=True)
class PerEmbeddingGroup:
    """Activations: the hidden dimension split into ``groups`` groups, each with its own range;
    with ``permute`` channels are first sorted by calibrated range (PEG, Bondarenko et al.)."""

    groups: int = 6
    permute: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.groups, int) and self.groups >= 1, "PerEmbeddingGroup.groups",
               f"must be an int >= 1, got {self.groups!r}")


Granularity = Union[PerTensor, PerChannel, PerGroup, PerToken, PerEmbeddingGroup]
_GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerToken, PerEmbeddingGroup)


# ---- observers -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MinMax:
    """Running min and max over all calibration data."""


@dataclasses.dataclass(frozen=True)
class MovingAverage:
    """Exponential moving average of per-batch min and max."""

    momentum: float = 0.01

    def __post_init__(self) -> None:
        _check(0.0 < self.momentum <= 1.0, "MovingAverage.momentum",
               f"must be in (0, 1], got {self.momentum!r}")


@dataclasses.dataclass(frozen=True)
class Percentile:
    """Range clipped at a percentile of |x| (or of x for affine), from a streaming histogram."""

    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        _check(50.0 < self.percentile <= 100.0, "Percentile.percentile",
               f"must be in (50, 100], got {self.percentile!r}")
        _check(_pow2(self.bins, 64), "Percentile.bins",
               f"must be a power of two >= 64, got {self.bins!r}")


@dataclasses.dataclass(frozen=True)
class MSE:
    """Range that minimises the quantization MSE over a streaming histogram (grid search)."""

    grid: int = 100
    bins: int = 2048

    def __post_init__(self) -> None:
        _check(isinstance(self.grid, int) and self.grid >= 10, "MSE.grid",
               f"must be an int >= 10, got {self.grid!r}")
        _check(_pow2(self.bins, 64), "MSE.bins",
               f"must be a power of two >= 64, got {self.bins!r}")


Observer = Union[MinMax, MovingAverage, Percentile, MSE]
_OBSERVERS = (MinMax, MovingAverage, Percentile, MSE)


# ---- specs and recipes ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one kind of tensor is quantized.

    ``symmetric`` specs use signed integers in ``[-2^(b-1)+1, 2^(b-1)-1]`` (restricted range,
    zero point 0) for weights, and ``[-2^(b-1), 2^(b-1)-1]`` for activations; affine specs use
    unsigned ``[0, 2^b-1]`` with a zero point. ``dynamic`` ranges are computed per call
    (only with ``PerToken`` or ``PerTensor``); static ranges come from calibration with
    ``observer``. ``learnable`` makes the scale a trainable parameter (QAT).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = PerTensor()
    dynamic: bool = False
    observer: Observer = MinMax()
    learnable: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.bits, int) and 2 <= self.bits <= 8, "QuantSpec.bits",
               f"must be an int in 2..8, got {self.bits!r}")
        _check(isinstance(self.granularity, _GRANULARITIES), "QuantSpec.granularity",
               f"must be one of {[g.__name__ for g in _GRANULARITIES]} (an instance), "
               f"got {self.granularity!r}")
        _check(isinstance(self.observer, _OBSERVERS), "QuantSpec.observer",
               f"must be one of {[o.__name__ for o in _OBSERVERS]} (an instance), "
               f"got {self.observer!r}")
        _check(not (self.dynamic and not isinstance(self.granularity, (PerToken, PerTensor))),
               "QuantSpec.dynamic", f"dynamic ranges need PerToken or PerTensor granularity, "
               f"got {type(self.granularity).__name__}")
        _check(not (isinstance(self.granularity, PerToken) and not self.dynamic),
               "QuantSpec.granularity", "PerToken is a run-time granularity: set dynamic=True")
        _check(not (self.dynamic and self.learnable), "QuantSpec.learnable",
               "a dynamic range has no scale to learn")

    @property
    def qmin(self) -> int:
        if not self.symmetric:
            return 0
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1 if not self.symmetric else 2 ** (self.bits - 1) - 1

    def short(self) -> str:
        g = type(self.granularity).__name__
        if isinstance(self.granularity, PerGroup):
            g = f"PerGroup({self.granularity.size})"
        kind = "sym" if self.symmetric else "affine"
        return f"{'u' if not self.symmetric else 'i'}{self.bits} {kind} {g}" + (
            " dynamic" if self.dynamic else "")


@dataclasses.dataclass(frozen=True)
class BCQ:
    """Binary-coding quantization of linear weights (``lowbit.quant.bcq``):
    ``W ~= sum_{i<bits} alpha_i B_i (+ offset)``, ``B_i in {-1, +1}``, one alpha per output row
    and ``group`` input columns (``None``: one per row; a group >= a layer's input dimension
    also gives that layer one per row). A weight format, not a uniform grid:
    it goes in ``Recipe.weight`` of a weight-only recipe (``recipes.W3_BCQ``, ``W4_BCQ``).

    ``iters`` alternating refinement rounds after the greedy fit (0: greedy only); ``offset``
    adds a per-(row, group) offset term (``uniform_as_bcq`` needs it; plain BCQ does not).
    """

    bits: int = 3
    group: int | None = 128
    iters: int = 15
    offset: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.bits, int) and not isinstance(self.bits, bool)
               and 1 <= self.bits <= 4, "BCQ.bits", f"must be an int in 1..4, got {self.bits!r}")
        _check(self.group is None or (isinstance(self.group, int)
                                      and not isinstance(self.group, bool) and self.group >= 8
                                      and self.group % 8 == 0),
               "BCQ.group", f"must be None (per row) or an int >= 8 and a multiple of 8 (bit "
               f"planes pack 8 per byte), got {self.group!r}")
        _check(isinstance(self.iters, int) and not isinstance(self.iters, bool)
               and self.iters >= 0, "BCQ.iters", f"must be an int >= 0, got {self.iters!r}")
        _check(isinstance(self.offset, bool), "BCQ.offset",
               f"must be a bool, got {self.offset!r}")

    def short(self) -> str:
        g = "per row" if self.group is None else f"group {self.group}"
        return f"BCQ q{self.bits} {g}" + (" +offset" if self.offset else "")


WeightSpec = Union[QuantSpec, BCQ]


# Tensor sites a recipe can quantize besides linear inputs and weights.
SITES = ("linear_input", "residual", "attn.o.output", "ffn.out.output", "attn.matmul",
         "embedding")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What to quantize and how.

    Args:
        weight: spec for linear weights (None: weights stay float), a ``QuantSpec`` (uniform
            grid) or a ``BCQ`` (binary codes; weight-only recipes).
        activation: spec for linear inputs (None: weight-only).
        roles: which linears (TransformerMap roles, see lowbit.roles.LINEAR_ROLES).
        sites: extra activation tensors for fully-integer pipelines: "residual" (residual-stream
            sums), "attn.o.output" / "ffn.out.output" (those linears' outputs), "attn.matmul"
            (the attention matmul inputs), "embedding" (embedding tables, weight spec).
        ignore: module-name globs ("encoder.layer.0.*") or roles ("head") left in float.
        sites_activation: spec for the extra sites (defaults to ``activation``).
        activation_overrides: ``((key, spec), ...)``: a different activation spec by role,
            where key is a linear role (that linear's input, e.g. "ffn.in") or one of the
            activation sites ("residual", "attn.o.output", "ffn.out.output"); e.g. PEG at the
            FFN input, FFN output and residual sums (``recipes.W8A8_PEG``).
    """

    name: str
    weight: WeightSpec | None
    activation: QuantSpec | None
    roles: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o",
                              "ffn.in", "ffn.gate", "ffn.out")
    sites: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    sites_activation: QuantSpec | None = None
    activation_overrides: tuple[tuple[str, QuantSpec], ...] = ()

    def __post_init__(self) -> None:
        _check(self.weight is not None or self.activation is not None, f"Recipe {self.name!r}",
               "quantizes nothing: give weight and/or activation specs")
        for r in self.roles:
            _check(r in LINEAR_ROLES, f"Recipe {self.name!r}.roles",
                   f"unknown linear role {r!r}; known: {list(LINEAR_ROLES)}")
        for s in self.sites:
            _check(s in SITES, f"Recipe {self.name!r}.sites", f"unknown site {s!r}; known: {list(SITES)}")
        for g in self.ignore:
            _check(isinstance(g, str) and g, f"Recipe {self.name!r}.ignore",
                   f"entries must be non-empty strings, got {g!r}")
        _check(not (self.sites and self.activation is None and self.sites_activation is None),
               f"Recipe {self.name!r}.sites", "extra sites need an activation spec")
        if isinstance(self.weight, BCQ):
            _check(self.activation is None and not self.sites and not self.activation_overrides,
                   f"Recipe {self.name!r}.weight", "BCQ weights are weight-only: activation, "
                   "sites and activation_overrides must be empty")
        elif self.weight is not None:
            _check(isinstance(self.weight, QuantSpec), f"Recipe {self.name!r}.weight",
                   f"must be a QuantSpec or a BCQ, got {type(self.weight).__name__}")
            _check(not self.weight.dynamic, f"Recipe {self.name!r}.weight",
                   "weights are quantized once; dynamic=True is for activations")
            _check(not isinstance(self.weight.granularity, (PerToken, PerEmbeddingGroup)),
                   f"Recipe {self.name!r}.weight",
                   f"{type(self.weight.granularity).__name__} is an activation granularity")
        if self.activation is not None:
            _check(not isinstance(self.activation.granularity, (PerGroup, PerChannel)),
                   f"Recipe {self.name!r}.activation",
                   f"{type(self.activation.granularity).__name__} is a weight granularity")

        for entry in self.activation_overrides:
            _check(isinstance(entry, tuple) and len(entry) == 2
                   and isinstance(entry[1], QuantSpec), f"Recipe {self.name!r}.activation_overrides",
                   f"entries must be (key, QuantSpec) pairs, got {entry!r}")
            key, spec = entry
            _check(key in LINEAR_ROLES or key in SITES and key != "embedding",
                   f"Recipe {self.name!r}.activation_overrides",
                   f"unknown key {key!r}; known: linear roles {list(LINEAR_ROLES)} or sites "
                   f"{[s for s in SITES if s != 'embedding']}")
            _check(not isinstance(spec.granularity, (PerGroup, PerChannel)),
                   f"Recipe {self.name!r}.activation_overrides[{key!r}]",
                   f"{type(spec.granularity).__name__} is a weight granularity")

    def override(self, key: str, default: QuantSpec | None) -> QuantSpec | None:
        """The activation spec for a linear role's input or a site: the override, if any."""
        for k, spec in self.activation_overrides:
            if k == key:
                return spec
        return default

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)
