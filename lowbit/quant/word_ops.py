"""``lowbit::tiered_embedding`` / ``lowbit::tiered_linear``: a word table whose rows are binary
coded at per-tier bit widths (``lowbit.quant.word_bits``), looked up, and read as a tied LM head.

The ``T`` tiers are stored one after the other in a *tier-concatenated row space*: tier ``t``
holds ``n_t`` rows (its tokens in ascending id order) and occupies rows
``[start_t, start_t + n_t)``, ``start_t = n_0 + ... + n_(t-1)``. ``pos`` maps a token id to its
row there::

    pos[id] = start_(tier[id]) + row[id]                       (int32 [V], a permutation of 0..V-1)
    W'_t[r, k] = sum_i alpha_t[r, 0, i] * B_t,i[r, k] (+ offset_t[r, 0])     (bcq_linear's W', G=1)

    tiered_embedding(ids, pos, planes[], alpha[], offset[])[..., :] = W'[pos[ids]]
    tiered_linear(x, pos, planes[], alpha[], offset[], bias)  = cat_t(x @ W'_t^T)[..., pos] + bias

with ``W' = cat_t(W'_t)`` [V, D] in tier order, so ``W'[pos[id]]`` is token ``id``'s row. The
head is the tied LM head ``logits = x @ E'^T`` of the same table (``E'[id] = W'[pos[id]]``):
per tier one bcq_linear product (the kernel form: each tier a bit-plane GEMV of its own width),
concatenated in tier order, gathered back into vocabulary order by ``pos``.

Operands of tier ``t`` (``bcq_linear``'s layout with one alpha group per row, ``G = 1``)::

    planes[t]  uint8 [q_t, n_t, D/8]    (``bcq.pack_planes``: bit j of byte c is B[8c + j] > 0)
    alpha[t]   float32 [n_t, 1, q_t]
    offset[t]  float32 [n_t, 1], or an empty tensor (numel 0) when the fit has no offset

``tiered_operands(te)`` builds them from a ``TieredEmbedding``. The eager implementations are
the reference and use ``bcq_linear.bcq_weight`` (the numerics live once); the embedding
dequantizes only the rows asked for, with the same rows in the same order as
``TieredEmbedding.lookup``, so the two agree bit for bit. Ids outside ``[0, V)`` raise
IndexError in eager (``torch.export`` uses the fake kernels, which check nothing).
Autograd is registered for ``x``, ``alpha``, ``offset`` and ``bias`` (never ``ids``, ``pos`` or
the planes: codes are not trained), with ``G`` the logits' gradient scattered back into tier
order (``G_cat[..., pos[id]] = dL/dy[..., id]``) and ``g_m`` the gradient of lookup ``m``::

    tiered_linear:     dL/dx = sum_t G_t @ W'_t,   dL/dW'_t = G_t^T @ x   (batch dims summed)
    tiered_embedding:  dL/dW'_t[r] = sum_{m: pos[ids[m]] = start_t + r} g_m
    both:              dL/dalpha_t[r, 0, i] = sum_k dL/dW'_t[r, k] B_t,i[r, k],
                       dL/doffset_t[r, 0] = sum_k dL/dW'_t[r, k]

(the embedding's sums run over the looked-up rows only, never a dense [V, D] gradient).
"""

from __future__ import annotations

import torch

from lowbit.quant.bcq import pack_planes, unpack_planes
from lowbit.quant.bcq_linear import bcq_weight, check_bcq_operands
from lowbit.quant.word_bits import TieredEmbedding

__all__ = ["ROW_CHUNK", "TIERED_EMBEDDING", "TIERED_LINEAR", "check_tiered_operands",
           "tiered_embedding", "tiered_linear", "tiered_operands", "tiered_weight"]

ROW_CHUNK = 16384     # table rows dequantized at once by the head (bounds memory, not results)


def _offset(o: torch.Tensor) -> torch.Tensor | None:
    return None if o.numel() == 0 and o.dim() == 1 else o


def check_tiered_operands(pos: torch.Tensor, planes: list[torch.Tensor],
                          alpha: list[torch.Tensor], offset: list[torch.Tensor]
                          ) -> tuple[int, int, list[int]]:
    """(V, D, [n_t]) of consistent tiered operands; ValueError naming the mismatch otherwise."""
    if not (len(planes) == len(alpha) == len(offset)) or not planes:
        raise ValueError(f"tiered op: planes, alpha and offset must list the same number (>= 1) "
                         f"of tiers, got {len(planes)}, {len(alpha)}, {len(offset)}")
    if pos.dim() != 1 or pos.dtype != torch.int32:
        raise ValueError(f"tiered op: pos must be int32 [V], got {pos.dtype} {tuple(pos.shape)}")
    sizes, dims = [], set()
    for t, (p, a, o) in enumerate(zip(planes, alpha, offset)):
        try:
            n, d = check_bcq_operands(p, a, _offset(o))
        except ValueError as e:
            raise ValueError(f"tiered op, tier {t}: {e}") from None
        if a.shape[1] != 1:
            raise ValueError(f"tiered op, tier {t}: alpha must be [n, 1, q] (one group per row), "
                             f"got {tuple(a.shape)}")
        sizes.append(n)
        dims.add(d)
    if len(dims) != 1:
        raise ValueError(f"tiered op: the tiers differ in width: {sorted(dims)}")
    v = pos.shape[0]
    if sum(sizes) != v:
        raise ValueError(f"tiered op: the tiers hold {sum(sizes)} rows ({sizes}), pos maps "
                         f"V={v} token ids")
    return v, dims.pop(), sizes


def _tier_rows(p: torch.Tensor, a: torch.Tensor, o: torch.Tensor, rows: torch.Tensor | slice
               ) -> torch.Tensor:
    """W'_t[rows] [len(rows), D]: ``bcq_weight`` of the selected rows only."""
    off = _offset(o)
    return bcq_weight(p[:, rows], a[rows], None if off is None else off[rows])


def _chunks(n: int):
    """Row slices of at most ``ROW_CHUNK`` rows (a 262k-row tier would otherwise unpack to
    GBs of float signs at once); ``[slice(0, 0)]`` for an empty tier."""
    return [slice(i, min(i + ROW_CHUNK, n)) for i in range(0, n, ROW_CHUNK)] or [slice(0, 0)]


def tiered_weight(pos: torch.Tensor, planes: list[torch.Tensor], alpha: list[torch.Tensor],
                  offset: list[torch.Tensor]) -> torch.Tensor:
    """The float32 table E' [V, D] in vocabulary order: ``E'[id] = cat_t(W'_t)[pos[id]]``."""
    check_tiered_operands(pos, planes, alpha, offset)
    w = torch.cat([_tier_rows(p, a, o, c) for p, a, o in zip(planes, alpha, offset)
                   for c in _chunks(a.shape[0])])
    return w[pos.long()]


def tiered_operands(te: TieredEmbedding) -> dict:
    """The ops' operands for ``te``: ``pos`` int32 [V] and per tier ``planes`` (packed),
    ``alpha`` [n_t, 1, q_t] and ``offset`` [n_t, 1] or an empty tensor (module docstring)."""
    tier, row = te.plan.remap()
    starts = torch.tensor([0, *te.plan.tier_sizes]).cumsum(0)[:-1]
    return {"pos": (starts[tier] + row).to(torch.int32),
            "planes": [pack_planes(w.planes_i8) for w in te.tiers],
            "alpha": [w.alpha_f32.contiguous() for w in te.tiers],
            "offset": [torch.zeros(0) if w.offset_f32 is None else w.offset_f32.contiguous()
                       for w in te.tiers]}


@torch.library.custom_op("lowbit::tiered_embedding", mutates_args=())
def tiered_embedding(ids: torch.Tensor, pos: torch.Tensor, planes: list[torch.Tensor],
                     alpha: list[torch.Tensor], offset: list[torch.Tensor]) -> torch.Tensor:
    v, d, sizes = check_tiered_operands(pos, planes, alpha, offset)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"tiered_embedding: ids must be an integer tensor, got {ids.dtype}")
    flat = ids.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= v):
        bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
        raise IndexError(f"tiered_embedding: token id {bad} is outside the vocabulary "
                         f"0..{v - 1} of the table")
    out = alpha[0].new_empty((flat.numel(), d))
    for t, sel, rows in _lookups(pos.long()[flat], sizes):
        out[sel] = _tier_rows(planes[t], alpha[t], offset[t], rows)
    return out.reshape(*ids.shape, d)


def _lookups(p: torch.Tensor, sizes: list[int]):
    """(tier, lookups in it, their rows in the tier) for looked-up rows ``p`` (concatenated
    row space), tiers with no lookup skipped; the selection ``TieredEmbedding.lookup`` makes."""
    start = 0
    for t, n in enumerate(sizes):
        sel = ((p >= start) & (p < start + n)).nonzero().flatten()
        if sel.numel():
            yield t, sel, p[sel] - start
        start += n


@tiered_embedding.register_fake
def _(ids, pos, planes, alpha, offset):
    return alpha[0].new_empty((*ids.shape, 8 * planes[0].shape[-1]))


@torch.library.custom_op("lowbit::tiered_linear", mutates_args=())
def tiered_linear(x: torch.Tensor, pos: torch.Tensor, planes: list[torch.Tensor],
                  alpha: list[torch.Tensor], offset: list[torch.Tensor],
                  bias: torch.Tensor | None) -> torch.Tensor:
    v, d, _ = check_tiered_operands(pos, planes, alpha, offset)
    if x.shape[-1] != d:
        raise ValueError(f"tiered_linear: input has {x.shape[-1]} features, the table D={d}")
    if bias is not None and tuple(bias.shape) != (v,):
        raise ValueError(f"tiered_linear: bias must be [V={v}], got {tuple(bias.shape)}")
    y = torch.cat([torch.nn.functional.linear(x, _tier_rows(p, a, o, c))
                   for p, a, o in zip(planes, alpha, offset) for c in _chunks(a.shape[0])], -1)
    y = y.index_select(-1, pos.long())
    return y if bias is None else y + bias


@tiered_linear.register_fake
def _(x, pos, planes, alpha, offset, bias):
    return x.new_empty((*x.shape[:-1], pos.shape[0]))


# ---- autograd (module docstring) -------------------------------------------------------------
def _save(ctx, first, pos, planes, alpha, offset) -> None:
    ctx.save_for_backward(first, pos, *planes, *alpha, *offset)
    ctx.tiers = len(planes)
    ctx.has_offset = [_offset(o) is not None for o in offset]


def _saved(ctx):
    first, pos, *rest = ctx.saved_tensors
    t = ctx.tiers
    return first, pos, rest[:t], rest[t:2 * t], rest[2 * t:]


def _row_grads(planes_u8: torch.Tensor, gw: torch.Tensor, rows=None, n: int = 0):
    """(dL/dalpha [n, 1, q], dL/doffset [n, 1]) from the rows ``gw`` of dL/dW' (the tier's
    rows ``rows`` when given, repeats summed per row with index_add; else all n in order)."""
    b = unpack_planes(planes_u8 if rows is None else planes_u8[:, rows]).to(gw.dtype)
    g_alpha = torch.einsum("qmk,mk->mq", b, gw).unsqueeze(1)
    g_off = gw.sum(-1, keepdim=True)
    if rows is not None:
        g_alpha = g_alpha.new_zeros((n, *g_alpha.shape[1:])).index_add_(0, rows, g_alpha)
        g_off = g_off.new_zeros((n, 1)).index_add_(0, rows, g_off)
    return g_alpha, g_off


def _embedding_setup(ctx, inputs, output):
    _save(ctx, *inputs)


def _embedding_backward(ctx, grad):
    ids, pos, planes, alpha, offset = _saved(ctx)
    sizes = [a.shape[0] for a in alpha]
    g_alpha = [torch.zeros_like(a) for a in alpha]
    g_off = [torch.zeros_like(o) for o in offset]
    g = grad.reshape(-1, grad.shape[-1])
    for t, sel, rows in _lookups(pos.long()[ids.reshape(-1).long()], sizes):
        g_alpha[t], off = _row_grads(planes[t], g[sel], rows, sizes[t])
        if ctx.has_offset[t]:
            g_off[t] = off
    return None, None, [None] * len(planes), g_alpha, g_off


def _linear_setup(ctx, inputs, output):
    _save(ctx, *inputs[:5])
    ctx.has_bias = inputs[5] is not None


def _linear_backward(ctx, grad):
    x, pos, planes, alpha, offset = _saved(ctx)
    g_cat = torch.empty_like(grad).index_copy_(grad.dim() - 1, pos.long(), grad)
    xs = x.reshape(-1, x.shape[-1])
    need_x = ctx.needs_input_grad[0]
    gx, g_alpha, g_off, start = torch.zeros_like(x) if need_x else None, [], [], 0
    for t, (p, a, o) in enumerate(zip(planes, alpha, offset)):
        ga, go = [], []
        for c in _chunks(a.shape[0]):
            g_c = g_cat[..., start + c.start:start + c.stop]
            if need_x:
                gx = gx + g_c @ _tier_rows(p, a, o, c)
            grads = _row_grads(p[:, c], g_c.reshape(xs.shape[0], c.stop - c.start).t() @ xs)
            ga.append(grads[0])
            go.append(grads[1])
        g_alpha.append(torch.cat(ga))
        g_off.append(torch.cat(go) if ctx.has_offset[t] else torch.zeros_like(o))
        start += a.shape[0]
    g_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    return gx, None, [None] * len(planes), g_alpha, g_off, g_bias


tiered_embedding.register_autograd(_embedding_backward, setup_context=_embedding_setup)
tiered_linear.register_autograd(_linear_backward, setup_context=_linear_setup)

TIERED_EMBEDDING = torch.ops.lowbit.tiered_embedding.default
TIERED_LINEAR = torch.ops.lowbit.tiered_linear.default
