"""Tensor-train (TT) factorisation of linear weights and embedding tables (Oseledets 2011;
Yang et al. 2023), written once for every IR: no graph here.

A linear ``y = x W^T + b`` with ``W`` [out, in] is seen as the tensor ``T = W^T`` reshaped to
the modes ``(i_1..i_p, o_1..o_q)`` (``prod i = in``, ``prod o = out``, row-major) and
factored into ``d = p + q`` cores::

    T[i_1..i_p, o_1..o_q] = G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, o_q, :],
    G_k  [r_{k-1}, n_k, r_k],   r_0 = r_d = 1

The input-side cores contract into ``A`` [in, r_p] and the output-side ones into ``B``
[r_p, out] (the *merged halves*), so ``W^T = A B`` and ``y = (x A) B + b``: two GEMMs of
``2 M r_p (in + out)`` FLOPs against the dense ``2 M in out``.

TT-SVD (``tt_svd``) sweeps left to right: the unfolding ``C`` [r_{k-1} n_k, rest] is split by
an SVD ``C = U S V^T``, ``G_k = U[:, :r_k]`` and ``C <- S V^T`` goes on. The ranks come from

* an int (every bond's cap) or a per-bond tuple, or a size budget (a fraction of the dense
  parameters, tensorly's proportional ranks): ``tensorly.decomposition.tensor_train``;
* a relative error budget ``eps``: tensorly takes no error budget, so the sweep is our own
  (same algorithm, float64): each bond keeps the fewest singular values whose dropped tail
  has norm ``<= eps |W|_F / sqrt(d - 1)``, which bounds ``|W - W_tt|_F <= eps |W|_F``
  (Oseledets 2011, Theorem 2.2).

A bond's rank never exceeds ``min(prod n_1..n_k, prod n_{k+1}..n_d)``; at those ranks the TT is
exact. Embedding tables take the TT-matrix form (``ttm_svd``, ``tensorly``'s
``tensor_train_matrix``): cores ``[r_{k-1}, v_k, d_k, r_k]`` over paired (row, column) modes,
a row read core slice by core slice; a vocabulary that factors badly is padded with zero rows.

Contraction order. ``program`` writes one layer as steps over named tensors (``x``, the cores
``core0..``, results), each an einsum, reshape, matmul, unflatten or flatten, which the FX and
ONNX passes translate op for op and ``run_program`` evaluates in torch. Every einsum is one
pairwise contraction of the order ``opt_einsum.contract_path`` finds cheapest in FLOPs:
``"merged"`` builds ``A`` and ``B`` that way and runs two matmuls; ``"chain"`` contracts ``x``
(``M`` rows) with the cores in the cheapest order over the whole network (at ``M >= r`` it is
the merged-halves order; at ``M = 1`` it is not).

QAT (``TTCoreQuant``): each core fake-quantized on the symmetric restricted grid with a learned
scale per channel of one bond (the last bond, the first for the last core: the bond whose
size is not 1), min-max initialised, the straight-through estimator through the rounding and
LSQ's gradient scale on the scale (``numerics.fake_quantize``, ``numerics.scale_grad``).
A per-bond scale folds exactly into the neighbouring core (``diag(s)`` commutes through the
bond), so an integer kernel can keep it for free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.config import TT, PerChannel, QuantSpec
from lowbit.errors import ConfigError
from lowbit.quant.numerics import fake_quantize, quantize, scale_grad, weight_grid, weight_qparams

__all__ = ["FORMS", "MAX_MODES", "Step", "TTCoreQuant", "TTMatrix", "TTWeight", "bond_limits",
           "core_axis", "embedding_modes", "factorize", "layer_modes", "program", "run_program",
           "step_shape", "tt_svd", "ttm_svd"]

FORMS = ("merged", "chain")
_LETTERS = "abcdefghijklnopqrstuvwxyz"      # 'm' is kept for the rows of x
MAX_MODES = (len(_LETTERS) - 1) // 2        # d modes need d + 1 bond letters


def _tensorly():
    try:
        import tensorly
        import tensorly.decomposition
    except ImportError as e:
        raise ImportError("TT-SVD needs tensorly and opt_einsum: pip install 'lowbit[tt]'") from e
    return tensorly


def _opt_einsum():
    try:
        import opt_einsum
    except ImportError as e:
        raise ImportError("TT contraction orders need opt_einsum: pip install 'lowbit[tt]'") from e
    return opt_einsum


# ---- modes and ranks -------------------------------------------------------------------------
def factorize(n: int, k: int) -> tuple[int, ...]:
    """``n`` as at most ``k`` factors as equal as possible, ascending (largest prime first into
    the smallest factor; factors of 1 dropped): ``factorize(768, 2) == (24, 32)``."""
    primes, m, p = [], int(n), 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    bins = [1] * k
    for p in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= p
    return tuple(sorted(b for b in bins if b > 1)) or (int(n),)


def layer_modes(spec: TT, in_features: int, out_features: int,
                where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(in_modes, out_modes) for a layer: ``spec.dims`` checked against the shape (ConfigError
    naming ``where`` and the value), or balanced factors (inputs ascending, outputs
    descending, as the anchor's ``[24, 32, 32, 24]``)."""
    if spec.dims is None:
        modes = (factorize(in_features, spec.modes),
                 tuple(reversed(factorize(out_features, spec.modes))))
    else:
        modes = spec.dims
        for side, dims, n in (("in", modes[0], in_features), ("out", modes[1], out_features)):
            if math.prod(dims) != n:
                raise ConfigError(f"{where}: TT.dims {side}_modes {dims} multiply to "
                                  f"{math.prod(dims)}, not the layer's {n} {side} features "
                                  f"(weight [{out_features}, {in_features}])")
    if len(modes[0]) + len(modes[1]) > MAX_MODES:
        raise ConfigError(f"{where}: {len(modes[0]) + len(modes[1])} TT modes; at most "
                          f"{MAX_MODES}")
    return modes


def bond_limits(modes: Sequence[int]) -> list[int]:
    """The largest useful rank of each inner bond: ``min(prod n_1..n_k, prod n_{k+1}..n_d)``."""
    return [min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))]


def _ranks(ranks: int | tuple[int, ...], modes: Sequence[int], where: str) -> list[int]:
    """Inner-bond ranks from an int (a cap) or a per-bond tuple (each within its bond)."""
    limits = bond_limits(modes)
    if isinstance(ranks, int):
        return [min(ranks, lim) for lim in limits]
    if len(ranks) != len(limits):
        raise ConfigError(f"{where}: TT.ranks {ranks} has {len(ranks)} entries; modes {tuple(modes)} "
                          f"have {len(limits)} inner bonds")
    for k, (r, lim) in enumerate(zip(ranks, limits)):
        if r > lim:
            raise ConfigError(f"{where}: TT.ranks[{k}] = {r} exceeds what bond {k} of modes "
                              f"{tuple(modes)} can hold ({lim}; limits {limits})")
    return list(ranks)


def core_axis(k: int, d: int) -> int:
    """The bond axis core ``k`` of ``d`` is quantized along (the one whose size is not 1)."""
    return 0 if k == d - 1 else 2


# ---- TT-SVD ----------------------------------------------------------------------------------
def _sweep(t: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """Oseledets' TT-SVD with the error budget ``eps`` (module docstring), float64."""
    shape, d = t.shape, t.dim()
    delta = eps * float(t.norm()) / math.sqrt(max(d - 1, 1))
    cores, c, r = [], t, 1
    for k in range(d - 1):
        c = c.reshape(r * shape[k], -1)
        u, s, vt = torch.linalg.svd(c, full_matrices=False)
        tail = (s ** 2).flip(0).cumsum(0).flip(0).sqrt()      # tail[j] = |s[j:]|
        keep = max(1, int((tail > delta).sum()))
        cores.append(u[:, :keep].reshape(r, shape[k], keep))
        c, r = s[:keep, None] * vt[:keep], keep
    cores.append(c.reshape(r, shape[-1], 1))
    return cores


def _as_f64(w: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w.detach()
                           ).cpu().to(torch.float64)


def _decompose(t: torch.Tensor, spec_ranks, error, size, where: str) -> list[torch.Tensor]:
    """Float64 cores of ``t``: tensorly (torch backend, so ``torch.set_num_threads`` governs
    its SVDs as it does every other op) for ranks and size budgets, our sweep for errors."""
    if not torch.isfinite(t).all():
        raise ConfigError(f"{where}: weight holds NaN or inf")
    if error is not None:
        return _sweep(t, float(error))
    tl = _tensorly()
    if size is not None:
        from tensorly.tt_tensor import validate_tt_rank

        proposed = validate_tt_rank(tuple(t.shape), rank=float(size))[1:-1]
        ranks = [min(r, lim) for r, lim in zip(proposed, bond_limits(t.shape))]
    else:
        ranks = _ranks(spec_ranks, t.shape, where)
    with tl.backend_context("pytorch"):
        tt = tl.decomposition.tensor_train(t, rank=[1, *ranks, 1])
    return list(tt.factors)


@dataclasses.dataclass(frozen=True, eq=False)
class TTWeight:
    """A linear weight in TT form: float32 ``cores`` ``[r_{k-1}, n_k, r_k]`` over the modes
    ``in_modes + out_modes`` of ``W^T`` (module docstring)."""

    cores: tuple[torch.Tensor, ...]
    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]

    @property
    def modes(self) -> tuple[int, ...]:
        return self.in_modes + self.out_modes

    @property
    def ranks(self) -> tuple[int, ...]:
        """Every bond's rank, the two outer 1s included."""
        return (1,) + tuple(int(c.shape[2]) for c in self.cores)

    @property
    def mid_rank(self) -> int:
        """The bond between the halves: ``A`` is [in, mid_rank]."""
        return self.ranks[len(self.in_modes)]

    @property
    def in_features(self) -> int:
        return math.prod(self.in_modes)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_modes)

    @property
    def params(self) -> int:
        return sum(c.numel() for c in self.cores)

    def nbytes(self, bits: int | None = None) -> int:
        """Bytes of the cores: float32, or ``bits`` per element plus a float32 scale per
        quantized bond channel."""
        if bits is None:
            return 4 * self.params
        d = len(self.cores)
        scales = sum(c.shape[core_axis(k, d)] for k, c in enumerate(self.cores))
        return sum(math.ceil(c.numel() * bits / 8) for c in self.cores) + 4 * scales

    def halves(self, cores: Sequence[torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [in, r], B [r, out]) with ``W^T = A B``, from ``cores`` (default: these;
        differentiable)."""
        env = self._env(cores)
        steps = program(self, "merged")
        run_program([s for s in steps if s.op != "matmul"], env)
        return env["A"], env["B"]

    def full(self) -> torch.Tensor:
        """The [out, in] weight the cores represent."""
        a, b = self.halves()
        return (a @ b).t().contiguous()

    def flops(self, rows: int) -> dict[str, int]:
        """Multiply-add FLOPs (2 per MAC) of one call on ``rows`` rows: "dense" ``x W^T``,
        "merged" two GEMMs with A and B ready, "halves" building A and B from the cores,
        "chain" opt_einsum's cheapest order over x and the cores."""
        r = self.mid_rank
        return {"dense": 2 * rows * self.in_features * self.out_features,
                "merged": 2 * rows * r * (self.in_features + self.out_features),
                "halves": _halves_cost(self), "chain": _chain(self, rows)[1]}

    def _env(self, cores: Sequence[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {f"core{k}": c for k, c in enumerate(self.cores if cores is None else cores)}


def tt_svd(w: Any, in_modes: Sequence[int], out_modes: Sequence[int], *,
           ranks: int | Sequence[int] | None = None, error: float | None = None,
           size: float | None = None, where: str = "weight") -> TTWeight:
    """TT-SVD of ``w`` [out, in] (torch or numpy) over ``(in_modes..., out_modes...)`` with
    exactly one of ``ranks`` / ``error`` / ``size`` (as in ``lowbit.config.TT``)."""
    spec = TT(ranks=tuple(ranks) if isinstance(ranks, (list, tuple)) else ranks, error=error,
              size=size, dims=(tuple(in_modes), tuple(out_modes)))
    w64 = _as_f64(w)
    if w64.dim() != 2:
        raise ConfigError(f"{where}: TT-SVD takes a 2-D [out, in] weight, got {w64.shape}")
    in_modes, out_modes = layer_modes(spec, w64.shape[1], w64.shape[0], where)
    t = w64.t().reshape(in_modes + out_modes)
    cores = _decompose(t, spec.ranks, spec.error, spec.size, where)
    return TTWeight(tuple(c.float().contiguous() for c in cores), in_modes, out_modes)


# ---- embeddings (TT-matrix) ------------------------------------------------------------------
def embedding_modes(rows: int, dim: int, k: int = 3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(row modes, column modes), ``k`` of each, for a [rows, dim] table: ``dim`` factored,
    ``rows`` rounded up (within 1% + 64) to the count whose largest factor is smallest (the
    table is padded with zero rows to it)."""
    best = min(range(rows, rows + rows // 100 + 65),
               key=lambda n: (max(_k_factors(n, k)), n))
    return _k_factors(best, k), _k_factors(dim, k)


def _k_factors(n: int, k: int) -> tuple[int, ...]:
    f = factorize(n, k)
    return (1,) * (k - len(f)) + f


@dataclasses.dataclass(frozen=True, eq=False)
class TTMatrix:
    """An embedding table in TT-matrix form: ``cores`` [r_{k-1}, v_k, d_k, r_k] over paired
    row / column modes; ``rows`` <= prod(v) real rows (the rest were zero padding)."""

    cores: tuple[torch.Tensor, ...]
    row_modes: tuple[int, ...]
    col_modes: tuple[int, ...]
    rows: int

    @property
    def params(self) -> int:
        return sum(c.numel() for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        return (1,) + tuple(int(c.shape[3]) for c in self.cores)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (any shape) -> [..., dim], one core slice per row mode
        (differentiable in the cores)."""
        flat = ids.reshape(-1).long()
        digits, rest = [], flat
        for v in reversed(self.row_modes):      # row-major multi-index
            digits.append(rest % v)
            rest = rest // v
        digits.reverse()
        out = None
        for core, digit in zip(self.cores, digits):
            piece = core[:, digit].permute(1, 0, 2, 3)        # [n, r_prev, d_k, r_next]
            if out is None:
                out = piece.reshape(flat.numel(), piece.shape[2], piece.shape[3])
            else:
                out = torch.einsum("nar,nrbs->nabs", out, piece).reshape(
                    flat.numel(), -1, piece.shape[3])
        return out.reshape(*ids.shape, -1)

    def full(self) -> torch.Tensor:
        return self.lookup(torch.arange(self.rows))


def ttm_svd(table: Any, row_modes: Sequence[int], col_modes: Sequence[int], *,
            ranks: int | Sequence[int] | None = None, error: float | None = None,
            where: str = "embedding") -> TTMatrix:
    """TT-matrix SVD of a [rows, dim] table (zero rows appended up to ``prod(row_modes)``)
    with ``ranks`` (tensorly's ``tensor_train_matrix``) or an ``error`` budget (our sweep over
    the same interleaved tensor)."""
    t = _as_f64(table)
    row_modes, col_modes = tuple(row_modes), tuple(col_modes)
    if len(row_modes) != len(col_modes):
        raise ConfigError(f"{where}: TT-matrix modes pair up: {row_modes} and {col_modes} differ "
                          f"in length")
    if math.prod(col_modes) != t.shape[1] or math.prod(row_modes) < t.shape[0]:
        raise ConfigError(f"{where}: TT-matrix modes {row_modes} x {col_modes} do not fit the "
                          f"table {tuple(t.shape)} (rows may be padded up, columns must match)")
    if (ranks is None) == (error is None):
        raise ConfigError(f"{where}: give exactly one of ranks or error")
    if not torch.isfinite(t).all():
        raise ConfigError(f"{where}: table holds NaN or inf")
    padded = torch.zeros(math.prod(row_modes), t.shape[1], dtype=torch.float64)
    padded[:t.shape[0]] = t
    k = len(row_modes)
    tensor = padded.reshape(row_modes + col_modes)
    if error is None:
        paired = [v * c for v, c in zip(row_modes, col_modes)]
        inner = _ranks(tuple(ranks) if not isinstance(ranks, int) else ranks, paired, where)
        tl = _tensorly()
        with tl.backend_context("pytorch"):
            factors = tl.decomposition.tensor_train_matrix(tensor, rank=[1, *inner, 1]).factors
    else:
        order = [i for pair in zip(range(k), range(k, 2 * k)) for i in pair]
        inter = tensor.permute(order).reshape([v * c for v, c in zip(row_modes, col_modes)])
        factors = [f.reshape(f.shape[0], v, c, f.shape[2])
                   for f, v, c in zip(_sweep(inter, float(error)), row_modes, col_modes)]
    cores = tuple(f.float().contiguous() for f in factors)
    return TTMatrix(cores, row_modes, col_modes, int(t.shape[0]))


# ---- programs: one layer as steps the passes translate ---------------------------------------
@dataclasses.dataclass(frozen=True)
class Step:
    """One op of a layer's program: ``out = op(*inputs)`` with ``arg`` (einsum: the equation,
    ``"..."`` for x's leading dims; reshape: the shape; unflatten: the modes the last dim
    splits into; flatten: (trailing dims merged, their product))."""

    op: str
    inputs: tuple[str, ...]
    out: str
    arg: Any = None


def _letters(d: int) -> tuple[str, str]:
    return _LETTERS[:d + 1], _LETTERS[d + 1:2 * d + 1]


def _pairwise(terms: list[str], shapes: list[tuple[int, ...]], names: list[str], output: str,
              out_name: str, prefix: str) -> tuple[list[Step], int]:
    """The cheapest pairwise order (opt_einsum, "optimal") as einsum steps; ``m`` (x's rows)
    is kept first in every term and written as ``...``."""
    oe = _opt_einsum()
    eq = ",".join(terms) + "->" + output
    _, info = oe.contract_path(eq, *shapes, shapes=True, optimize="optimal")
    ops, subs, steps = list(names), list(terms), []
    for i, (inds, _, einsum_str, _, _) in enumerate(info.contraction_list):
        ins = [ops.pop(j) for j in inds]
        in_subs = [subs.pop(j) for j in inds]
        last = i == len(info.contraction_list) - 1
        out = output if last else _m_first(einsum_str.split("->")[1])
        name = out_name if last else f"{prefix}{i}"
        equation = (",".join(in_subs) + "->" + out).replace("m", "...")
        steps.append(Step("einsum", tuple(ins), name, equation))
        ops.append(name)
        subs.append(out)
    return steps, int(info.opt_cost)


def _m_first(sub: str) -> str:
    return ("m" + sub.replace("m", "")) if "m" in sub else sub


def _half(tt: TTWeight, side: str) -> tuple[list[Step], int]:
    d, p = len(tt.modes), len(tt.in_modes)
    bonds, modes = _letters(d)
    ks = range(p) if side == "A" else range(p, d)
    names = [f"core{k}" for k in ks]
    shape = ((tt.in_features, tt.mid_rank) if side == "A" else (tt.mid_rank, tt.out_features))
    if len(names) == 1:
        return [Step("reshape", (names[0],), side, shape)], 0
    terms = [bonds[k] + modes[k] + bonds[k + 1] for k in ks]
    out = ("".join(modes[k] for k in ks) + bonds[p] if side == "A"
           else bonds[p] + "".join(modes[k] for k in ks))
    steps, cost = _pairwise(terms, [tuple(tt.cores[k].shape) for k in ks], names, out,
                            f"{side}_t", f"{side}_")
    return steps + [Step("reshape", (f"{side}_t",), side, shape)], cost


def _halves_cost(tt: TTWeight) -> int:
    return _half(tt, "A")[1] + _half(tt, "B")[1]


def _chain(tt: TTWeight, rows: int) -> tuple[list[Step], int]:
    d, p = len(tt.modes), len(tt.in_modes)
    bonds, modes = _letters(d)
    terms = ["m" + modes[:p]] + [bonds[k] + modes[k] + bonds[k + 1] for k in range(d)]
    shapes = [(rows, *tt.in_modes)] + [tuple(c.shape) for c in tt.cores]
    names = ["x_modes"] + [f"core{k}" for k in range(d)]
    return _pairwise(terms, shapes, names, "m" + modes[p:], "y_modes", "t")


def program(tt: TTWeight, form: str = "merged", rows: int = 128) -> list[Step]:
    """The steps computing ``y`` (bias excluded) from ``x`` [..., in] and ``core0..``:
    "merged" (A, B, then ``(x A) B``) or "chain" (x contracted with the cores in
    opt_einsum's cheapest order at ``rows`` rows of x)."""
    if form == "merged":
        a, _ = _half(tt, "A")
        b, _ = _half(tt, "B")
        return a + b + [Step("matmul", ("x", "A"), "h"), Step("matmul", ("h", "B"), "y")]
    if form == "chain":
        steps, _ = _chain(tt, rows)
        return ([Step("unflatten", ("x",), "x_modes", tt.in_modes)] + steps
                + [Step("flatten", ("y_modes",), "y", (len(tt.out_modes), tt.out_features))])
    raise ConfigError(f"TT form must be one of {FORMS}, got {form!r}")


def step_shape(s: Step, shapes: Sequence[Sequence[Any]]) -> list:
    """The output shape of step ``s`` from its inputs' shapes (ints or SymInts; einsum's
    ``...`` stands for x's leading dims)."""
    if s.op == "einsum":
        terms, out = s.arg.split("->")
        size, lead = {}, []
        for term, shape in zip(terms.split(","), shapes):
            if term.startswith("..."):
                term, lead = term[3:], list(shape[:len(shape) - len(term) + 3])
            size.update(zip(term, shape[len(shape) - len(term):]))
        return (lead if out.startswith("...") else []) + [size[c] for c in out.replace("...", "")]
    a = list(shapes[0])
    if s.op == "reshape":
        return list(s.arg)
    if s.op == "matmul":
        return a[:-1] + [shapes[1][-1]]
    if s.op == "unflatten":
        return a[:-1] + list(s.arg)
    return a[:-s.arg[0]] + [s.arg[1]]


def run_program(steps: Sequence[Step], env: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Evaluate ``steps`` in torch on ``env`` (name -> tensor; results are added to it);
    returns ``env["y"]`` when the program computes it."""
    for s in steps:
        a = [env[n] for n in s.inputs]
        if s.op == "einsum":
            env[s.out] = torch.einsum(s.arg, *a)
        elif s.op == "reshape":
            env[s.out] = a[0].reshape(s.arg)
        elif s.op == "matmul":
            env[s.out] = a[0] @ a[1]
        elif s.op == "unflatten":
            env[s.out] = a[0].unflatten(-1, s.arg)
        elif s.op == "flatten":
            env[s.out] = a[0].flatten(-s.arg[0])
        else:
            raise ValueError(f"unknown TT program op {s.op!r}")
    return env.get("y")


# ---- QAT of the cores ------------------------------------------------------------------------
class TTCoreQuant(nn.Module):
    """Learnable-scale fake quantization of one TT core (module docstring): symmetric grid
    ``[-(2^(b-1)-1), 2^(b-1)-1]``, one scale per channel of bond ``axis`` (min-max initialised
    from ``core``), straight-through rounding, LSQ gradient scale."""

    def __init__(self, core: torch.Tensor, bits: int, axis: int, site: str = "core"):
        super().__init__()
        spec = QuantSpec(bits=bits, symmetric=True, granularity=PerChannel(axis), learnable=True)
        self.bits, self.axis, self.site = bits, axis, site
        self.qmin, self.qmax = weight_grid(spec)
        scale, zp = weight_qparams(core, spec, site)
        self.scale = nn.Parameter(scale.detach().clone())
        self.register_buffer("zero_point", zp)
        self.grad_factor = 1.0 / math.sqrt(core.numel() / scale.numel() * self.qmax)

    def extra_repr(self) -> str:
        return f"{self.site}: int{self.bits}, scale per bond axis {self.axis}"

    def forward(self, core: torch.Tensor) -> torch.Tensor:
        scale = scale_grad(self.scale, self.grad_factor)
        return fake_quantize(core, scale, self.zero_point, self.qmin, self.qmax)

    def integer(self, core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes, float32 scale [channels]) of ``core`` at the current scale."""
        s = self.scale.detach()
        return (quantize(core.detach(), s, self.zero_point, self.qmin, self.qmax),
                s.reshape(-1).clone())
