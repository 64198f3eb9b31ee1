"""Binary-coding quantization (BCQ; Xu et al. 2018, Kwon et al. 2022 "AlphaTuning").

A weight ``W`` [N, K] is split into ``G = K / g`` groups of ``g`` input columns per output row
(``g = K``: one group per row) and approximated per (row n, group j) as::

    W[n, k] ~= sum_{i<q} alpha[n, j, i] * B_i[n, k]  (+ offset[n, j]),   B_i in {-1, +1},
    j = k // g,   q = 1..4 bit planes.

Every element takes one of the ``2^q`` codes ``c = offset + sum_i s_i alpha_i`` (s in {-1,+1}^q)
of its row-group; the planes hold which one.

Greedy fit (``fit_greedy``), plane by plane on the residual ``r`` (``r = W - offset`` with an
offset term, offset = the (importance-weighted) mean of the group, else ``r = W``)::

    B_i = sign(r) (0 -> +1),   alpha_i = sum(m |r|) / sum(m),   r <- r - alpha_i B_i

with ``m`` the importance (1 without one), so each alpha is the weighted least-squares optimum
for its plane given the ones before.

Alternating refinement (``refine``), one step per iteration, as naver-aics/lut-gemm
``examples/bcq.py`` does:

    1. alphas (and offset) by weighted least squares given B, per row-group:
       ``(B^T M B) a = B^T M w`` (B with a column of ones for the offset), solved in float64
       with a pseudo-inverse (singular Gram: duplicate planes, all-zero importance);
       then ``alpha <- sort(|alpha|, descending)`` (the code set is unchanged by sign or order);
    2. B re-chosen: every element takes the nearest of its group's ``2^q`` codes (a per-element
       weight does not change which code is nearest).

Step 1 cannot raise the weighted error ``E = sum m (W - W')^2`` in exact arithmetic and step 2
cannot either, but float round-off (or an ill-conditioned Gram) can. So each step is accepted
per row-group only where its error is not above the previous one; elsewhere the old alphas,
offset and planes are kept. The refined error is therefore never above the greedy one, group by
group (``group_error``). Refinement stops early when no group changes.

Uniform as BCQ (``uniform_as_bcq``). An asymmetric b-bit uniform code ``x' = (u - z) s`` with
``u = sum_i 2^i u_i``, ``u_i in {0, 1}`` is, with ``B_i = 2 u_i - 1``::

    x' = sum_i (s 2^(i-1)) B_i + s ((2^b - 1) / 2 - z)

so alphas ``s 2^(i-1)`` (stored most significant first) and ``offset = s ((2^b-1)/2 - z)``
give the same values, and one bit-plane kernel serves both formats.

Planes are int8 in {-1, +1}, shaped [q, N, K]; ``pack_planes`` stores them 8 per byte.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.errors import ConfigError
from lowbit.quant.numerics import group_view, qparams_from_range, quantize

__all__ = ["MAX_BITS", "BCQWeight", "codes_as_bcq", "fit", "fit_greedy", "group_error",
           "pack_planes", "refine", "uniform_as_bcq", "unpack_planes"]

MAX_BITS = 4
DEFAULT_ITERS = 15  # the reference's default number of alternating rounds


@dataclasses.dataclass(frozen=True, eq=False)
class BCQWeight:
    """A BCQ-coded [N, K] weight: ``planes_i8`` [q, N, K] in {-1, +1}, ``alpha_f32`` [N, G, q]
    (magnitudes, descending along q after a fit), ``offset_f32`` [N, G] or None, ``group``
    (input columns per alpha; K for per-row)."""

    planes_i8: torch.Tensor
    alpha_f32: torch.Tensor
    offset_f32: torch.Tensor | None
    group: int

    @property
    def bits(self) -> int:
        return self.planes_i8.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.planes_i8.shape[1:])

    @property
    def groups(self) -> int:
        return self.alpha_f32.shape[1]

    def dequantize(self) -> torch.Tensor:
        """``W' = sum_i alpha_i B_i (+ offset)``, float32 [N, K]."""
        n, k = self.shape
        b = self.planes_i8.to(torch.float32).reshape(self.bits, n, self.groups, self.group)
        w = torch.einsum("qngk,ngq->ngk", b, self.alpha_f32)
        if self.offset_f32 is not None:
            w = w + self.offset_f32.unsqueeze(-1)
        return w.reshape(n, k)


def _check(w: torch.Tensor, bits: int, group: int | None, importance: torch.Tensor | None,
           name: str) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Validated float32 weight, group size, and importance expanded to [N, K] (or None)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"{name}: BCQ bits must be an int in 1..{MAX_BITS}, got {bits!r}")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ConfigError(f"{name}: BCQ needs a 2-D float weight [out, in], got "
                          f"{getattr(w, 'shape', type(w).__name__)}")
    k = w.shape[1]
    group = k if group is None else group
    if isinstance(group, bool) or not isinstance(group, int) or group < 1 or k % group:
        raise ConfigError(f"{name}: BCQ group={group!r} must be a positive int dividing the "
                          f"input dimension {k} of weight {tuple(w.shape)} (or None: per row)")
    w = w.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        raise ConfigError(f"{name}: weight holds NaN or inf")
    if importance is not None:
        imp = torch.as_tensor(importance).detach().to(torch.float32)
        try:
            imp = torch.broadcast_to(imp, w.shape)
        except RuntimeError:
            raise ConfigError(f"{name}: importance of shape {tuple(imp.shape)} does not "
                              f"broadcast to the weight {tuple(w.shape)}") from None
        if not torch.isfinite(imp).all() or (imp < 0).any():
            raise ConfigError(f"{name}: importance must be finite and >= 0")
        importance = imp
    return w, group, importance


def _ones(w: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(w) if importance is None else importance


def group_error(w: torch.Tensor, fit: BCQWeight, importance: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Weighted squared error ``sum m (W - W')^2`` per (row, group), float32 [N, G]."""
    w, _, imp = _check(w, fit.bits, fit.group, importance, "group_error")
    return _error(w, fit, imp)


def _error(w: torch.Tensor, fit: BCQWeight, imp: torch.Tensor | None) -> torch.Tensor:
    d2 = (w - fit.dequantize()) ** 2
    if imp is not None:
        d2 = d2 * imp
    return group_view(d2, fit.group).sum(-1)


def fit_greedy(w: torch.Tensor, bits: int, group: int | None = None,
               importance: torch.Tensor | None = None, offset: bool = False) -> BCQWeight:
    """Greedy BCQ (module docstring): each plane the sign of the residual, each alpha its
    weighted mean magnitude. ``importance`` broadcasts to ``w`` (e.g. [K] per input column)."""
    w, group, imp = _check(w, bits, group, importance, "fit_greedy")
    n, k = w.shape
    m = group_view(_ones(w, imp), group)
    msum = m.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
    r = group_view(w, group).clone()
    off = None
    if offset:
        off = (r * m).sum(-1) / msum
        r -= off.unsqueeze(-1)
    planes, alphas = [], []
    for _ in range(bits):
        b = torch.where(r >= 0, 1.0, -1.0)
        a = (r.abs() * m).sum(-1) / msum
        r -= b * a.unsqueeze(-1)
        planes.append(b.reshape(n, k).to(torch.int8))
        alphas.append(a)
    return BCQWeight(torch.stack(planes), torch.stack(alphas, -1), off, group)


def _signs(bits: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[2^q, q] float32 on ``device``: row c holds +1 where bit i of c is set, else -1."""
    c = torch.arange(2 ** bits, device=device).unsqueeze(-1)
    return ((c >> torch.arange(bits, device=device)) & 1).to(torch.float32) * 2 - 1


def _least_squares(wg: torch.Tensor, mg: torch.Tensor, fit: BCQWeight
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weighted least-squares alphas [N, G, q] (and offset [N, G]) for the fit's planes.

    The Gram ``B^T M B`` and ``B^T M w`` are summed in float32 (exact counts without
    importance), solved in float64 by Cholesky; groups whose Gram is singular (duplicate
    planes, all-zero importance) fall back to the pseudo-inverse (minimum-norm solution)."""
    n, _k = fit.shape
    b = fit.planes_i8.to(torch.float32).reshape(fit.bits, n, fit.groups, fit.group)
    b = b.permute(1, 2, 0, 3)                                   # [N, G, q, g]
    if fit.offset_f32 is not None:
        b = torch.cat([b, torch.ones_like(b[..., :1, :])], -2)
    bm = b * mg.unsqueeze(-2)
    gram = (bm @ b.transpose(-1, -2)).to(torch.float64)         # [N, G, q(+1), q(+1)]
    rhs = (bm @ wg.unsqueeze(-1)).to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(gram)
    x = torch.cholesky_solve(rhs, chol)
    bad = info != 0
    if bad.any():
        x[bad] = torch.linalg.pinv(gram[bad], hermitian=True) @ rhs[bad]
    x = x.squeeze(-1)
    alpha = x[..., :fit.bits].abs().sort(-1, descending=True).values.to(torch.float32)
    off = x[..., fit.bits].to(torch.float32) if fit.offset_f32 is not None else None
    return alpha, off


def _nearest_planes(wg: torch.Tensor, alpha: torch.Tensor, off: torch.Tensor | None
                    ) -> torch.Tensor:
    """Planes [q, N, K] choosing, for every element, the nearest code of its row-group."""
    n, groups, g = wg.shape
    bits = alpha.shape[-1]
    signs = _signs(bits, alpha.device)                          # [2^q, q]
    codes = alpha @ signs.T                                     # [N, G, 2^q]
    if off is not None:
        codes = codes + off.unsqueeze(-1)
    codes, order = codes.sort(dim=-1, stable=True)
    mids = (codes[..., 1:] + codes[..., :-1]) / 2
    idx = torch.searchsorted(mids.contiguous(), wg.contiguous())    # nearest sorted code
    cid = torch.gather(order, -1, idx)                          # [N, G, g] code ids
    b = signs[cid]                                              # [N, G, g, q]
    return b.permute(3, 0, 1, 2).reshape(bits, n, groups * g).to(torch.int8)


def refine(w: torch.Tensor, fit: BCQWeight, iters: int = DEFAULT_ITERS,
           importance: torch.Tensor | None = None) -> BCQWeight:
    """Alternating refinement (module docstring). A step is kept per row-group only where it
    does not raise the weighted error, so the result is never worse than ``fit``."""
    w, group, imp = _check(w, fit.bits, fit.group, importance, "refine")
    if tuple(w.shape) != fit.shape:
        raise ConfigError(f"refine: weight {tuple(w.shape)} does not match the fit {fit.shape}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ConfigError(f"refine: iters must be an int >= 0, got {iters!r}")
    n, k = fit.shape
    wg, mg = group_view(w, group), group_view(_ones(w, imp), group)
    err = _error(w, fit, imp)
    for _ in range(iters):
        alpha, off = _least_squares(wg, mg, fit)
        planes = _nearest_planes(wg, alpha, off)
        new = BCQWeight(planes, alpha, off, group)
        new_err = _error(w, new, imp)
        keep = new_err <= err                                   # [N, G]
        if not keep.any():
            break
        keep_k = keep.unsqueeze(-1).expand(n, fit.groups, group).reshape(n, k)
        merged = BCQWeight(
            torch.where(keep_k, planes, fit.planes_i8),
            torch.where(keep.unsqueeze(-1), alpha, fit.alpha_f32),
            None if off is None else torch.where(keep, off, fit.offset_f32), group)
        unchanged = (torch.equal(merged.planes_i8, fit.planes_i8)
                     and torch.equal(merged.alpha_f32, fit.alpha_f32))
        fit, err = merged, torch.where(keep, new_err, err)
        if unchanged:
            break
    return fit


def fit(w: torch.Tensor, bits: int, group: int | None = None, iters: int = DEFAULT_ITERS,
        importance: torch.Tensor | None = None, offset: bool = False) -> BCQWeight:
    """``refine(w, fit_greedy(w, ...), iters)``: BCQ with ``bits`` planes, one alpha per row
    (``group=None``) or per row and ``group`` input columns."""
    return refine(w, fit_greedy(w, bits, group, importance, offset), iters, importance)


def uniform_as_bcq(w: torch.Tensor, bits: int, group: int | None = None) -> BCQWeight:
    """Asymmetric min-max uniform quantization (lowbit's ``quantize_weight`` with an affine
    ``QuantSpec``, per row or ``PerGroup(group)``) written exactly as BCQ planes + offset."""
    w, group, _ = _check(w, bits, group, None, "uniform_as_bcq")
    n, k = w.shape
    wg = group_view(w, group)
    qmax = 2 ** bits - 1
    scale, zp = qparams_from_range(wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True),
                                   0, qmax, symmetric=False)
    u = quantize(wg, scale, zp, 0, qmax, torch.int64).reshape(n, k)
    return codes_as_bcq(u, scale, zp, 0, bits, group)


def codes_as_bcq(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, bits: int,
                 group: int) -> BCQWeight:
    """Uniform codes ``x' = (q - zp) s`` ([N, K] integers in ``[qmin, qmin + 2^bits - 1]``;
    ``s``, ``zp`` one per row and ``group`` columns, any shape holding [N, K / group] values)
    as BCQ, exactly (module docstring with ``u = q - qmin``, ``z = zp - qmin``)."""
    n, k = q.shape
    u = (q.to(torch.int64) - qmin)
    if bool((u < 0).any()) or bool((u >= 2 ** bits).any()):
        raise ConfigError(f"codes_as_bcq: codes outside [{qmin}, {qmin + 2 ** bits - 1}]")
    shifts = torch.arange(bits - 1, -1, -1)                     # most significant first
    planes = (((u.unsqueeze(0) >> shifts.view(-1, 1, 1)) & 1) * 2 - 1).to(torch.int8)
    s = scale.to(torch.float32).reshape(n, k // group)
    z = zp.to(torch.float32).reshape(n, k // group) - qmin
    alpha = s.unsqueeze(-1) * (2.0 ** shifts.to(torch.float32) / 2)
    return BCQWeight(planes, alpha, s * ((2 ** bits - 1) / 2 - z), group)


def pack_planes(planes_i8: torch.Tensor) -> torch.Tensor:
    """[q, N, K] in {-1, +1} -> uint8 [q, N, K/8], bit j of byte c = (element 8c + j > 0)."""
    q, n, k = planes_i8.shape
    if k % 8:
        raise ConfigError(f"pack_planes: K={k} is not a multiple of 8")
    bits = (planes_i8 > 0).to(torch.int32).reshape(q, n, k // 8, 8)
    return (bits << torch.arange(8, dtype=torch.int32, device=bits.device)).sum(-1).to(torch.uint8)


def unpack_planes(packed_u8: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_planes``: uint8 [q, N, K/8] -> int8 [q, N, K] in {-1, +1}."""
    q, n, kb = packed_u8.shape
    bits = (packed_u8.to(torch.int32).unsqueeze(-1)
            >> torch.arange(8, dtype=torch.int32, device=packed_u8.device)) & 1
    return (bits * 2 - 1).reshape(q, n, kb * 8).to(torch.int8)
