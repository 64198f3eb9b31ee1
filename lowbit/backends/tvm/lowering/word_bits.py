"""Per-word mixed-precision word tables -> Relax, for both frontends (FX ``lowbit::
tiered_embedding`` / ``tiered_linear``, ONNX ``lowbit.TieredEmbedding`` / ``TieredLinear``).

The operands are the ops' own (lowbit/quant/word_ops.py): ``pos`` int32 [V] and per tier t
``planes_t`` uint8 [q_t, n_t, D/8], ``alpha_t`` [n_t, 1, q_t], ``offset_t`` [n_t, 1] or
absent; tier t holds rows ``[s_t, s_t + n_t)`` of the tier-concatenated table ``W'``, and
``W'[pos[id]]`` is token ``id``'s row. Tiers with no rows are dropped (the ONNX form always
carries 4). Both ops read every tier operand in the BCQ kernel layout (kernels/bcq.py, one
alpha group per row: G = 1, g = D), column blocks of ``W_t = block_width(n_t)`` rows::

    planes'_t [nb_t, D/8, q_t, W_t],  alpha'_t [nb_t, 1, q_t, W_t],  offset'_t [nb_t, 1, W_t]

(``nb_t = ceil(n_t / W_t)``, zero-padded; lowering/bcq.py's repacking with G = 1). Each
operand is repacked once per import (``_packed``: cached by operand in the kernel cache) by
Relax ops on the parameters, which LiftTransformParams moves to ``main_transform_params`` (run
once at load), so a tied head and its lookup read ONE copy of each tier (a ``head="separate"``
head shares the planes and pos: one copy of the planes). Lowered as::

    tiered_embedding(ids [..], ...)  ->  call_tir(tiered_embedding gather, [ids as [M], pos,
                                         planes'_t, alpha'_t(, offset'_t) per tier])  as [.., D]
                                         (kernels/word_bits.py, block layout)
    tiered_linear(x [.., D], ...)    ->  y_t = bcq_linear(x as [M, D], planes'_t, alpha'_t,
                                                          offset'_t, 0)             [M, n_t]
                                         y   = take(concat_t(y_t, axis=1), pos, axis=1)
                                               (+ bias)                    as [.., V]

The head is the "tiered GEMV": one ``bcq_linear`` kernel per tier (the CPU and CUDA
implementations serve it), the logits concatenated in tier order and gathered back into
vocabulary order by ``pos`` (``take`` in "clip" mode: ``pos`` is a parameter; FuseOps makes
concat, take and the bias add one kernel).

Token ids: the gather kernel clamps every index it reads (an id outside [0, V) never reads
outside a buffer) and declares its ids operand as an index into ``pos``
(``kernels.word_bits.INDEX_OPERANDS``), so the module boundary check (input_bounds.py) can
refuse such ids before the call.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from tvm import relax

from lowbit.backends.tvm.kernels import word_bits as kernel
from lowbit.backends.tvm.kernels.bcq import block_width
from lowbit.backends.tvm.lowering.bcq import emit_bcq_call
from lowbit.errors import CompileError

__all__ = ["KINDS", "Tier", "emit_tiered_embedding", "emit_tiered_linear", "tiers_of"]

KINDS = ("tiered_embedding", "tiered_linear")     # their names in the lowering log
_PACKED = "lowbit.word_bits.packed"     # kernel-cache key of a repacked operand: (_PACKED, var)


@dataclasses.dataclass(frozen=True)
class Tier:
    """One non-empty tier: its operands (``offset`` None when absent) and static sizes."""

    planes: relax.Expr
    alpha: relax.Expr
    offset: relax.Expr | None
    q: int
    n: int


def _shape(v: relax.Expr, what: str) -> list[int]:
    try:
        return [int(d) for d in v.ty.shape.values]
    except (TypeError, AttributeError) as e:
        raise CompileError(f"{what}: needs a static shape, got {v.ty}") from e


def _dtype(v: relax.Expr) -> str:
    return str(v.ty.dtype)


def _tier(t: int, planes, alpha, offset, what: str) -> tuple[Tier | None, int]:
    """Tier ``t`` (None when it has no rows) and its width D, shapes checked."""
    p, a = _shape(planes, f"{what} tier {t} planes"), _shape(alpha, f"{what} tier {t} alpha")
    if len(p) != 3 or a != [p[1], 1, p[0]] or (_dtype(planes), _dtype(alpha)) != (
            "uint8", "float32"):
        raise CompileError(f"{what}: tier {t} needs planes uint8 [q, n, D/8] and alpha float32 "
                           f"[n, 1, q], got planes {_dtype(planes)} {p} and alpha "
                           f"{_dtype(alpha)} {a}")
    if offset is not None and _shape(offset, f"{what} tier {t} offset") == [0]:
        offset = None                              # FX: an empty tensor stands for "none"
    if offset is not None and _shape(offset, f"{what} tier {t} offset") != [p[1], 1]:
        raise CompileError(f"{what}: tier {t} offset must be [n={p[1]}, 1] or empty, got "
                           f"{_shape(offset, what)}")
    return (Tier(planes, alpha, offset, p[0], p[1]) if p[1] else None), 8 * p[2]


def tiers_of(pos: relax.Expr, planes: list, alpha: list, offset: list, what: str
             ) -> tuple[list[Tier], int]:
    """The non-empty tiers (in tier order) and the width D of a tiered op's operands; a
    ``CompileError`` naming ``what`` (the node) and the shapes when they do not fit."""
    if not planes or not len(planes) == len(alpha) == len(offset):
        raise CompileError(f"{what}: planes, alpha and offset must list the same number of "
                           f"tiers (>= 1), got {len(planes)}, {len(alpha)}, {len(offset)}")
    tiers, widths = [], set()
    for t, ops in enumerate(zip(planes, alpha, offset)):
        tier, d = _tier(t, *ops, what)
        widths.add(d)
        if tier is not None:
            tiers.append(tier)
    v = _shape(pos, f"{what} pos")
    if len(widths) != 1 or len(v) != 1 or _dtype(pos) != "int32" or v[0] != sum(
            t.n for t in tiers) or not tiers:
        raise CompileError(f"{what}: pos must be int32 [V] over tiers of one width holding V "
                           f"rows; got pos {_dtype(pos)} {v}, widths {sorted(widths)}, tier "
                           f"rows {[t.n for t in tiers]}")
    return tiers, widths.pop()


def _packed(bb: relax.BlockBuilder, v: relax.Expr, axis: int, rows: int,
            layout: tuple[int, ...], perm: list[int], kernels: dict) -> relax.Expr:
    """Operand ``v`` in the kernel layout: its row axis ``axis`` zero-padded to ``rows``,
    reshaped to ``layout``, permuted by ``perm``; emitted once per operand (cached in
    ``kernels``), so every kernel that reads ``v`` reads the same tensor."""
    key = (_PACKED, v)
    if key not in kernels:
        shape = _shape(v, "tiered operand")
        if rows > shape[axis]:
            widths = [0] * (2 * len(shape))
            widths[2 * axis + 1] = rows - shape[axis]
            v = relax.op.nn.pad(v, widths)
        kernels[key] = bb.emit(relax.op.permute_dims(relax.op.reshape(v, layout), perm))
    return kernels[key]


def _kernel_layout(bb: relax.BlockBuilder, tier: Tier, d: int, kernels: dict) -> list[relax.Expr]:
    """[planes', alpha'(, offset')] of ``tier`` in the BCQ kernel layout (module docstring)."""
    w = block_width(tier.n)
    nb = -(-tier.n // w)
    out = [_packed(bb, tier.planes, 1, nb * w, (tier.q, nb, w, d // 8), [1, 3, 0, 2], kernels),
           _packed(bb, tier.alpha, 0, nb * w, (nb, w, 1, tier.q), [0, 2, 3, 1], kernels)]
    if tier.offset is not None:
        out.append(_packed(bb, tier.offset, 0, nb * w, (nb, w, 1), [0, 2, 1], kernels))
    return out


def emit_tiered_embedding(bb: relax.BlockBuilder, ids: relax.Expr, pos: relax.Expr,
                          tiers: list[Tier], d: int, kernels: dict, what: str) -> relax.Expr:
    """The lookup of ``ids`` [..] (any integer dtype) as one gather kernel: [.., D].
    ``kernels``: the import's cache of kernels (by name) and repacked operands, shared with
    ``emit_tiered_linear`` and ``emit_bcq_linear``."""
    shape, dtype = _shape(ids, f"{what} ids"), _dtype(ids)
    if not dtype.startswith(("int", "uint")):
        raise CompileError(f"{what}: token ids must be integers, got {dtype} {shape}")
    m = math.prod(shape)
    if m == 0:
        raise CompileError(f"{what}: no token ids to look up (ids {shape})")
    config = [(t.q, t.n, t.offset is not None) for t in tiers]
    widths = [block_width(t.n) for t in tiers]
    name = (f"lowbit_tiered_embedding_{m}_{d}_{dtype}_"
            + "_".join(f"q{q}n{n}o{int(o)}w{w}" for (q, n, o), w in zip(config, widths)))
    if name not in kernels:
        kernels[name] = bb.add_func(kernel.tiered_embedding(m, d, config, dtype, widths), name)
    args = [bb.emit(relax.op.reshape(ids, (m,))), pos]
    for t in tiers:
        args += _kernel_layout(bb, t, d, kernels)
    y = bb.emit(relax.call_tir(kernels[name], args, relax.TensorType((m, d), "float32")))
    return bb.emit(relax.op.reshape(y, (*shape, d)))


def emit_tiered_linear(bb: relax.BlockBuilder, x: relax.Expr, pos: relax.Expr,
                       tiers: list[Tier], d: int, bias: relax.Expr | None,
                       kernels: dict, what: str) -> relax.Expr:
    """The tied head ``x`` [.., D] -> logits [.., V]: one ``bcq_linear`` per tier,
    concatenated in tier order, gathered into vocabulary order by ``pos`` (+ ``bias``);
    ``kernels`` as for ``emit_tiered_embedding``."""
    shape = _shape(x, f"{what} input")
    v = sum(t.n for t in tiers)
    if shape[-1] != d or _dtype(x) != "float32":
        raise CompileError(f"{what}: the input must be float32 [.., D={d}], got "
                           f"{_dtype(x)} {shape}")
    if bias is not None and _shape(bias, f"{what} bias") != [v]:
        raise CompileError(f"{what}: bias must be [V={v}], got {_shape(bias, what)}")
    m = math.prod(shape[:-1])
    x2 = bb.emit(relax.op.reshape(x, (m, d)))
    ys = [emit_bcq_call(bb, x2, [*_kernel_layout(bb, t, d, kernels),
                                 relax.const(np.zeros(t.n, np.float32))],
                        t.q, t.n, 1, t.offset is not None, kernels) for t in tiers]
    y = ys[0] if len(ys) == 1 else bb.emit(relax.op.concat(ys, axis=1))
    y = bb.emit(relax.op.take(y, pos, axis=1, mode="clip"))
    if bias is not None:
        y = bb.emit(relax.op.add(y, bias))
    return bb.emit(relax.op.reshape(y, (*shape[:-1], v)))
