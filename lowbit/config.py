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
    "QuantSpec", "BCQ", "TT", "WeightSpec", "Recipe",
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


def _int(v: object, least: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _ints(v: object) -> bool:
    return isinstance(v, tuple) and len(v) > 0 and all(_int(x) for x in v)


@dataclasses.dataclass(frozen=True)
class TT:
    """Tensor-train compression of a linear weight (``lowbit.quant.tt``; Yang et al. 2023).

    The [out, in] weight, as ``W^T`` reshaped to the modes ``(in_modes..., out_modes...)``,
    becomes a chain of cores ``G_k [r_{k-1}, n_k, r_k]`` fitted by TT-SVD. The ranks come from
    exactly one of:

        ranks  an int: every inner bond's maximum rank (capped at what the bond can hold, so a
               large int gives the exact TT); or a tuple: one rank per inner bond
               (``len(in_modes) + len(out_modes) - 1`` of them, each within its bond's limit)
        error  a relative Frobenius error budget ``|W - W_tt|_F / |W|_F`` in (0, 1)
        size   the cores' parameter count as a fraction of the dense weight's, in (0, 1]
               (ranks proportional to the modes, then capped per bond: at most that fraction)

    ``dims``: ``(in_modes, out_modes)``, e.g. ``((24, 32), (32, 24))`` for BERT-base attention
    (the anchor's ``[24, 32, 32, 24]``); their products must be the layer's in / out features
    (checked per layer). None: each side factored into ``modes`` balanced factors.
    ``bits``: None (float cores), 8 or 4: learnable-scale fake quantization of every core
    (symmetric, one scale per bond channel; QAT with the straight-through estimator).
    Lists are accepted where tuples are asked for.
    """

    ranks: int | tuple[int, ...] | None = None
    error: float | None = None
    size: float | None = None
    dims: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    modes: int = 2
    bits: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ranks, list):
            object.__setattr__(self, "ranks", tuple(self.ranks))
        if isinstance(self.dims, (list, tuple)) and len(self.dims) == 2 and all(
                isinstance(d, (list, tuple)) for d in self.dims):
            object.__setattr__(self, "dims", tuple(tuple(d) for d in self.dims))
        given = [n for n in ("ranks", "error", "size") if getattr(self, n) is not None]
        _check(len(given) == 1, "TT", f"give exactly one of ranks, error or size, got "
               f"{given or 'none'}")
        _check(self.ranks is None or _int(self.ranks) or _ints(self.ranks), "TT.ranks",
               f"must be an int >= 1 or a tuple of ints >= 1 (one per inner bond), got "
               f"{self.ranks!r}")
        _check(self.error is None or (isinstance(self.error, (int, float))
                                      and not isinstance(self.error, bool)
                                      and 0.0 < self.error < 1.0),
               "TT.error", f"must be a relative error in (0, 1), got {self.error!r}")
        _check(self.size is None or (isinstance(self.size, (int, float))
                                     and not isinstance(self.size, bool)
                                     and 0.0 < self.size <= 1.0),
               "TT.size", f"must be a fraction of the dense parameters in (0, 1], got "
               f"{self.size!r}")
        _check(self.dims is None or (isinstance(self.dims, tuple) and len(self.dims) == 2
                                     and all(_ints(d) for d in self.dims)),
               "TT.dims", f"must be (in_modes, out_modes), two tuples of ints >= 1, e.g. "
               f"((24, 32), (32, 24)); got {self.dims!r}")
        _check(_int(self.modes) and self.modes <= 6, "TT.modes",
               f"must be an int in 1..6 (modes per side when dims is None), got {self.modes!r}")
        _check(self.bits is None or (self.bits in (4, 8) and not isinstance(self.bits, bool)),
               "TT.bits", f"must be None (float cores), 8 or 4, got {self.bits!r}")

    def short(self) -> str:
        how = (f"r{self.ranks}" if self.ranks is not None else
               f"error {self.error}" if self.error is not None else f"size {self.size}")
        dims = ("" if self.dims is None else
                " dims " + "->".join("x".join(map(str, d)) for d in self.dims))
        return f"TT {how}{dims}" + (f" int{self.bits}" if self.bits else "")


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
