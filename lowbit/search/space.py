"""The search space of mixed-precision search: what a subgroup is, what it may become.

A **subgroup** is a block of output rows ``W[a:b, :]`` of one linear's weight ``W`` [N, K]
(taken as [out, in] whatever the graph's layout): the whole linear (``WholeLinear``), one
attention head's rows of q / k / v (``PerHead``: blocks of ``head_dim`` rows), or ``size``
FFN neurons' rows of the FFN-in linears (``PerNeurons``: up and gate). Every weight format
below keeps its scales per row (per channel, or per row and group of input columns), so a
row block quantizes alone exactly as it does inside the whole weight, and subgroups can be
chosen independently.

A **candidate** is one way to store a subgroup (``Candidate(code, bits)``)::

    "uniform" b in 2..8   Q(W) = dequantize(quantize_weight(W, QuantSpec(b, symmetric,
                          PerGroup(group) | PerChannel(0))))            (lowbit.quant.numerics)
    "bcq"     b in 1..4   Q(W) = bcq.fit(W, b, group, iters, offset).dequantize()  (quant.bcq)
    "fp"      b = 32|16   Q(W) = W (fp16: W rounded to half)
    "pruned"  b = 0       Q(W) = 0, the rows are removed

and what its linear's **input** becomes (``act``, one per linear: every kept subgroup of a
linear takes the same, ``SearchSpace.activations`` says which are offered)::

    "fp"      the input as it is (fp32)
    "fp16"    the input rounded to half before the GEMM (any weight format)
    "int8"    static u8 per tensor, calibrated (``recipes.W8A8``'s activation spec), only
              with "uniform" 8-bit weights, then stored per channel whatever the group:
              the W8A8 integer kernel (``linear_u8s8``), as ``lowbit.quantize`` makes it

An activation choice stores nothing, so under a byte budget alone "fp" always wins; it pays
off under a latency budget (``lowbit.search.latency``) or when the user pins it.

``SearchSpace`` says which candidates exist (``bits`` x ``codes`` + "fp") and how they are
stored (group, symmetric, scale and float widths: ``lowbit.search.cost``). Subgroups that
prune together (q, k, v of one head; up and gate of one neuron group) share a ``tie``.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.config import BCQ, PerChannel, PerGroup, QuantSpec
from lowbit.errors import ConfigError
from lowbit.quant import bcq
from lowbit.quant.numerics import dequantize, group_view, quantize_weight

__all__ = ["ACTIVATIONS", "CODES", "Candidate", "PerHead", "PerNeurons", "SearchSpace", "Subgroup",
           "WholeLinear", "dequantized"]

CODES = ("uniform", "bcq", "fp", "pruned")
ACTIVATIONS = ("fp", "fp16", "int8")


def act_allowed(code: str, bits: int, act: str) -> bool:
    """Whether a weight stored as ``code``/``bits`` can take input ``act`` (module docstring:
    int8 inputs only with uniform 8-bit weights, the W8A8 kernel; a pruned block has no input
    and keeps "fp")."""
    if code == "pruned":
        return act == "fp"
    return act != "int8" or (code == "uniform" and bits == 8)


# ---- subgroup granularity (a type, as config granularities are) ----------------------------
@dataclasses.dataclass(frozen=True)
class WholeLinear:
    """One subgroup per linear (the default)."""


@dataclasses.dataclass(frozen=True)
class PerHead:
    """q, k, v (or a fused qkv) split into one subgroup per head (``head_dim`` rows); the
    q heads that share a k/v head (GQA) and that k/v head are pruned together."""


@dataclasses.dataclass(frozen=True)
class PerNeurons:
    """The FFN-in linears (up, and gate if gated) split into blocks of ``size`` neurons; a
    block of up and the same block of gate are pruned together."""

    size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"PerNeurons.size: must be an int >= 1, got {self.size!r}")


@dataclasses.dataclass(frozen=True)
class Subgroup:
    """Rows ``rows[0]:rows[1]`` of linear ``linear`` (weight [out_features, in_features])."""

    linear: str
    role: str
    weight: str                  # the parameter's name in the graph
    rows: tuple[int, int]
    in_features: int
    out_features: int
    tie: str | None = None       # subgroups with one tie are pruned together or not at all
    layout: str = "out_in"       # how the graph holds the weight: "out_in" or "in_out"

    @property
    def name(self) -> str:
        a, b = self.rows
        return self.linear if (a, b) == (0, self.out_features) else f"{self.linear}[{a}:{b}]"

    @property
    def elements(self) -> int:
        return (self.rows[1] - self.rows[0]) * self.in_features


# ---- candidates -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Candidate:
    """One storage choice: ``code`` in CODES and its ``bits``, and its linear's input ``act``
    in ACTIVATIONS (tables in the module doc)."""

    code: str
    bits: int
    act: str = "fp"

    def __post_init__(self) -> None:
        ok = {"uniform": range(2, 9), "bcq": range(1, bcq.MAX_BITS + 1), "fp": (16, 32),
              "pruned": (0,)}
        if self.code not in ok:
            raise ConfigError(f"Candidate.code: must be one of {CODES}, got {self.code!r}")
        if isinstance(self.bits, bool) or self.bits not in ok[self.code]:
            raise ConfigError(f"Candidate.bits: {self.code!r} takes bits in "
                              f"{list(ok[self.code])}, got {self.bits!r}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"Candidate.act: must be one of {ACTIVATIONS}, got {self.act!r}")
        if not act_allowed(self.code, self.bits, self.act):
            raise ConfigError(f"Candidate.act: {self.act!r} inputs go with uniform 8-bit "
                              f"weights only (the W8A8 kernel), not {self.code!r} {self.bits}")

    @property
    def pruned(self) -> bool:
        return self.code == "pruned"

    def label(self, symmetric: bool = True) -> str:
        """``int4``, ``bcq3``, ``fp32``, ``pruned``; with a quantized input ``int8/a8``,
        ``int4/a16``."""
        if self.code == "uniform":
            w = f"{'int' if symmetric else 'uint'}{self.bits}"
        else:
            w = {"bcq": f"bcq{self.bits}", "fp": f"fp{self.bits}", "pruned": "pruned"}[self.code]
        return w + {"fp": "", "fp16": "/a16", "int8": "/a8"}[self.act]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Which candidates a subgroup may take and how each is stored.

    Args:
        bits: weight bit widths; 0 is pruning. Each b > 0 gives a uniform candidate (2..8)
            and a BCQ candidate (1..4) for the codes asked for.
        codes: among "uniform", "bcq".
        fp: also offer "fp" (not quantized), stored at ``fp_bytes``.
        symmetric: the uniform grid (``QuantSpec.symmetric``: restricted signed grid, no zero
            point; else affine with a zero point).
        group: input columns per scale (uniform) / per alpha set (BCQ); None, or a group not
            below a layer's K, gives one per row. A power of two >= 8.
        bcq_iters, bcq_offset: ``lowbit.config.BCQ.iters`` / ``.offset``.
        scale_bytes: 4 (fp32, as the QDQ graphs and the TVM kernels store scales and alphas)
            or 2 (fp16).
        fp_bytes: 4 (fp32) or 2 (fp16) per element of an unquantized subgroup.
        activations: the input choices offered per linear, among ACTIVATIONS (module
            docstring; "int8" needs ``symmetric``, as the W8A8 kernel's weights are).
    """

    bits: tuple[int, ...] = (0, 2, 3, 4, 8)
    codes: tuple[str, ...] = ("uniform", "bcq")
    fp: bool = True
    symmetric: bool = True
    group: int | None = 128
    bcq_iters: int = bcq.DEFAULT_ITERS
    bcq_offset: bool = False
    scale_bytes: int = 4
    fp_bytes: int = 4
    activations: tuple[str, ...] = ("fp",)

    def __post_init__(self) -> None:
        def bad(field: str, msg: str) -> None:
            raise ConfigError(f"SearchSpace.{field}: {msg}")

        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "codes", tuple(self.codes))
        object.__setattr__(self, "activations", tuple(self.activations))
        acts = self.activations
        if not acts or not set(acts) <= set(ACTIVATIONS) or len(set(acts)) != len(acts):
            bad("activations", f"must be distinct values among {ACTIVATIONS}, got {acts!r}")
        if "int8" in acts and not self.symmetric:
            bad("activations", "int8 inputs run the W8A8 kernel, whose weights are symmetric "
                               "(SearchSpace(symmetric=True))")
        if any(isinstance(b, bool) or b not in (0, 1, 2, 3, 4, 5, 6, 7, 8) for b in self.bits):
            bad("bits", f"must be ints in 0..8 (0: pruned), got {self.bits!r}")
        if not set(self.codes) <= {"uniform", "bcq"}:
            bad("codes", f"must be among ('uniform', 'bcq'), got {self.codes!r}")
        g = self.group
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 8
                              or g & (g - 1)):
            bad("group", f"must be None or a power of two >= 8, got {g!r}")
        if self.scale_bytes not in (2, 4):
            bad("scale_bytes", f"must be 2 (fp16) or 4 (fp32), got {self.scale_bytes!r}")
        if self.fp_bytes not in (2, 4):
            bad("fp_bytes", f"must be 2 (fp16) or 4 (fp32), got {self.fp_bytes!r}")
        BCQ(bits=1, group=None, iters=self.bcq_iters, offset=self.bcq_offset)  # validates
        if not self.candidates():
            bad("bits", f"bits={self.bits} x codes={self.codes} (fp={self.fp}) gives no "
                        f"candidate")

    def candidates(self) -> tuple[Candidate, ...]:
        """Pruned first (if 0 in bits), then by bits: uniform, BCQ; then fp; each with every
        input choice of ``activations`` it allows, in that order."""
        out = [Candidate("pruned", 0)] if 0 in self.bits else []
        weights = []
        for b in sorted(set(self.bits) - {0}):
            if "uniform" in self.codes and b >= 2:
                weights.append(("uniform", b))
            if "bcq" in self.codes and b <= bcq.MAX_BITS:
                weights.append(("bcq", b))
        if self.fp:
            weights.append(("fp", 8 * self.fp_bytes))
        out += [Candidate(code, b, a) for code, b in weights for a in self.activations
                if act_allowed(code, b, a)]
        return tuple(out)

    def per_row(self, k: int) -> bool:
        """One scale (or alpha set) per row for a K-wide weight: no group, or one >= K."""
        return self.group is None or self.group >= k

    def fitted(self, k: int) -> SearchSpace:
        """This space with a group that divides K, as ``apply_precision`` stores a linear that
        pruning narrowed (o, down): the plan's group if it divides K, else the largest power
        of two >= 8 below it that does, else one scale per row (None).
        ``lowbit.passes.precision_plan.fitted_space`` calls this."""
        g = self.group
        if g is None or self.per_row(k) or k % g == 0:
            return self
        while g > 8 and k % g:
            g //= 2
        return dataclasses.replace(self, group=g if k % g == 0 else None)

    def groups_per_row(self, k: int) -> int:
        """Scale (or alpha set) groups per row of a K-wide weight (``check_width`` first)."""
        return 1 if self.per_row(k) else k // self.group

    def uniform_spec(self, bits: int, k: int, act: str = "fp") -> QuantSpec:
        """The weight spec of uniform ``bits`` rows of a K-wide weight: per row (no group, or
        one >= K, or int8 inputs: the W8A8 kernel's per-channel weights) or per group."""
        per_row = self.per_row(k) or act == "int8"
        gran = PerChannel(0) if per_row else PerGroup(self.group)
        return QuantSpec(bits=bits, symmetric=self.symmetric, granularity=gran)

    def bcq_group(self, k: int) -> int | None:
        return None if self.per_row(k) else self.group

    def check_width(self, k: int, name: str) -> None:
        """ConfigError naming ``name`` when a group does not divide K, or BCQ cannot pack K."""
        if not self.per_row(k) and k % self.group:
            raise ConfigError(f"{name}: group={self.group} does not divide the input dimension "
                              f"{k} (SearchSpace(group=None) takes one scale per row)")
        if "bcq" in self.codes and k % 8:
            raise ConfigError(f"{name}: BCQ packs bit planes 8 per byte; the input dimension "
                              f"{k} is not a multiple of 8 (SearchSpace(codes=('uniform',)))")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SearchSpace:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            raise ConfigError(f"SearchSpace.from_dict: unknown fields "
                              f"{sorted(set(d) - names) if isinstance(d, dict) else d!r}")
        return cls(**d)


def dequantized(w: torch.Tensor, cand: Candidate, space: SearchSpace, name: str = "weight"
                ) -> torch.Tensor:
    """``Q(W)`` of the module docstring for an [N, K] float weight, through lowbit.quant."""
    w = w.detach().to(torch.float32)
    k = w.shape[1]
    if cand.code == "fp":
        return w if cand.bits == 32 else w.half().float()
    if cand.code == "pruned":
        return torch.zeros_like(w)
    space.check_width(k, name)
    if cand.code == "bcq":
        return bcq.fit(w, cand.bits, space.bcq_group(k), space.bcq_iters,
                       offset=space.bcq_offset).dequantize()
    spec = space.uniform_spec(cand.bits, k, cand.act)
    q, scale, zp = quantize_weight(w, spec, name)
    if isinstance(spec.granularity, PerGroup):
        return dequantize(group_view(q, spec.granularity.size), scale, zp).reshape(w.shape)
    return dequantize(q, scale, zp)
