"""Per-word mixed-precision word tables -> Relax, for both frontends (FX ``lowbit::
tiered_embedding`` / ``tiered_linear``, ONNX ``lowbit.TieredEmbedding`` / ``TieredLinear``).

The operands are the ops' own (lowbit/quant/word_ops.py): ``pos`` int32 [V] and per tier t
``planes_t`` uint8 [q_t, n_t, D/8], ``alpha_t`` [n_t, 1, q_t], ``offset_t`` [n_t, 1] or
absent; tier t holds rows ``[s_t, s_t + n_t)`` of the tier-concatenated table ``W'``, and
``W'[pos[id]]`` is token ``id``'s row. Tiers with no rows are dropped (the ONNX form always
carries 4). Lowered as::

    tiered_embedding(ids [..], ...)  ->  call_tir(tiered_embedding gather, [ids as [M], pos,
                                         planes_t, alpha_t(, offset_t) per tier])  as [.., D]
                                         (kernels/word_bits.py: the op's operands as they are)
    tiered_linear(x [.., D], ...)    ->  y_t = bcq_linear(x, planes_t, alpha_t, offset_t)
                                         y   = take(concat_t(y_t, axis=-1), pos, axis=-1)
                                               (+ bias)                              [.., V]

The head is the "tiered GEMV": one ``emit_bcq_linear`` per tier (its operands repacked once
at load by Relax ops that LiftTransformParams lifts, one alpha group per row: G = 1, g = D;
the CPU and CUDA ``bcq_linear`` kernels serve it), the logits concatenated in tier order and
gathered back into vocabulary order by ``pos`` (``take`` in "clip" mode: ``pos`` is a
parameter; FuseOps makes concat, take and the bias add one kernel).

Token ids: the gather kernel clamps every index it reads (an id outside [0, V) never reads
outside a buffer) and declares its ids operand as an index into ``pos``
(``kernels.word_bits.INDEX_OPERANDS``), so the module boundary check (input_bounds.py) can
refuse such ids before the call.
"""

from __future__ import annotations

import dataclasses
import math

from tvm import relax

from lowbit.backends.tvm.kernels import word_bits as kernel
from lowbit.backends.tvm.lowering.bcq import emit_bcq_linear
from lowbit.errors import CompileError

__all__ = ["KINDS", "Tier", "emit_tiered_embedding", "emit_tiered_linear", "tiers_of"]

KINDS = ("tiered_embedding", "tiered_linear")     # their names in the lowering log


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


def emit_tiered_embedding(bb: relax.BlockBuilder, ids: relax.Expr, pos: relax.Expr,
                          tiers: list[Tier], d: int, kernels: dict[str, relax.GlobalVar],
                          what: str) -> relax.Expr:
    """The lookup of ``ids`` [..] (any integer dtype) as one gather kernel: [.., D]."""
    shape, dtype = _shape(ids, f"{what} ids"), _dtype(ids)
    if not dtype.startswith(("int", "uint")):
        raise CompileError(f"{what}: token ids must be integers, got {dtype} {shape}")
    m = math.prod(shape)
    if m == 0:
        raise CompileError(f"{what}: no token ids to look up (ids {shape})")
    config = [(t.q, t.n, t.offset is not None) for t in tiers]
    name = (f"lowbit_tiered_embedding_{m}_{d}_{dtype}_"
            + "_".join(f"q{q}n{n}o{int(o)}" for q, n, o in config))
    if name not in kernels:
        kernels[name] = bb.add_func(kernel.tiered_embedding(m, d, config, dtype), name)
    args = [bb.emit(relax.op.reshape(ids, (m,))), pos]
    for t in tiers:
        args += [t.planes, t.alpha, *([t.offset] if t.offset is not None else [])]
    y = bb.emit(relax.call_tir(kernels[name], args, relax.TensorType((m, d), "float32")))
    return bb.emit(relax.op.reshape(y, (*shape, d)))


def emit_tiered_linear(bb: relax.BlockBuilder, x: relax.Expr, pos: relax.Expr,
                       tiers: list[Tier], d: int, bias: relax.Expr | None,
                       kernels: dict[str, relax.GlobalVar], what: str) -> relax.Expr:
    """The tied head ``x`` [.., D] -> logits [.., V]: one ``bcq_linear`` per tier,
    concatenated in tier order, gathered into vocabulary order by ``pos`` (+ ``bias``)."""
    shape = _shape(x, f"{what} input")
    v = sum(t.n for t in tiers)
    if shape[-1] != d or _dtype(x) != "float32":
        raise CompileError(f"{what}: the input must be float32 [.., D={d}], got "
                           f"{_dtype(x)} {shape}")
    if bias is not None and _shape(bias, f"{what} bias") != [v]:
        raise CompileError(f"{what}: bias must be [V={v}], got {_shape(bias, what)}")
    ys = [emit_bcq_linear(bb, x, t.planes, t.alpha, t.offset, None, kernels) for t in tiers]
    axis = len(shape) - 1
    y = ys[0] if len(ys) == 1 else bb.emit(relax.op.concat(ys, axis=axis))
    y = bb.emit(relax.op.take(y, pos, axis=axis, mode="clip"))
    return y if bias is None else bb.emit(relax.op.add(y, bias))
