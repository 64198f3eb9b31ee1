"""The per-word mixed-precision gather (``tiered_embedding``): rows of a word table whose tiers
are binary coded at their own widths (``lowbit::tiered_embedding``, lowbit/quant/word_ops.py),
looked up by token id.

The kernel reads the op's own operands (no repacking: a row's q planes are q contiguous runs
of D/8 bytes, its alphas one run of q floats), the non-empty tiers only, in tier order::

    ids_i      int32 | int64 [M]       token ids (the lookups, flattened)
    pos_i32    int32 [V]               token id -> row of the tier-concatenated row space
    planes_t   uint8 [q_t, n_t, D/8]   bit j of byte c: B_t,i[r, 8 c + j] > 0   (per tier t)
    alpha_t    float32 [n_t, 1, q_t]
    offset_t   float32 [n_t, 1]        (only tiers fitted with an offset)
    out_f32    float32 [M, D]

For lookup m, with the static tier starts ``s_t = n_0 + ... + n_(t-1)``::

    p[m]      = clamp(pos[clamp(ids[m], 0, V - 1)], 0, V - 1)
    t         = the tier with s_t <= p[m] < s_(t+1),     r = clamp(p[m] - s_t, 0, n_t - 1)
    out[m, k] = sum_i alpha_t[r, 0, i] * (2 b_i - 1) (+ offset_t[r, 0]),
                b_i = (planes_t[i, r, k // 8] >> (k % 8)) & 1

which is ``bcq_weight`` of row r (the op's eager form). The clamps make every read lie inside
its buffer whatever the ids (an id outside [0, V) reads the row of the nearest valid id):
the module boundary refuses such ids before the call (input_bounds.py), the kernel itself
never reads out of bounds, even when called directly or with random operands (check.py).
``INDEX_OPERANDS`` declares which parameter indexes which table, for that boundary check.

Schedules: the compute definition is target-independent. On LLVM (``_on_cpu``): the row
index is computed once per lookup, then the D outputs of the row in 8-lane vectors, one plane
byte per vector and plane (broadcast, shifted by each lane's bit; 16 lanes would read two
bytes per vector, which LLVM turns into scalar loads: 3x slower), lookups parallel when there
are enough of them. The tier branch is an ``if_then_else`` on the (lane-invariant) row, so
only the row's own tier is decoded. On CUDA no implementation is registered: the plain
injective kernel goes to dlight's Fallback rule (one thread per output element).
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import s_tir, te, tirx
from tvm.target import Target

from lowbit.backends.tvm.kernels import registry
from lowbit.backends.tvm.kernels.registry import finish

__all__ = ["INDEX_OPERANDS", "KIND", "TierShape", "tier_starts", "tiered_embedding"]

KIND = "tiered_embedding"
# PrimFunc attribute read by input_bounds.py: [[index param, table param, table axis], ...];
# the values of the index parameter must lie in [0, extent of that axis of the table)
INDEX_OPERANDS = "lowbit.index_operands"
VECTOR = 8             # output lanes per vector (one plane byte)
PARALLEL_MIN = 4096    # outputs (M * D) below which the lookups run on one core

TierShape = tuple[int, int, bool]     # (q_t planes, n_t rows, has an offset)


def tier_starts(tiers: Sequence[TierShape]) -> list[int]:
    """``s_t``: the first row of each tier in the tier-concatenated row space."""
    out, start = [], 0
    for _, n, _ in tiers:
        out.append(start)
        start += n
    return out


def _check(m: int, d: int, tiers: Sequence[TierShape], ids_dtype: str) -> None:
    if m < 1 or d < 8 or d % 8:
        raise ValueError(f"tiered_embedding needs M >= 1 lookups and D a multiple of 8, got "
                         f"M={m}, D={d}")
    if not tiers or any(not 1 <= q <= 8 or n < 1 for q, n, _ in tiers):
        raise ValueError(f"tiered_embedding takes non-empty tiers of 1..8 planes, got "
                         f"(q, n, offset) = {list(tiers)}")
    if not ids_dtype.startswith(("int", "uint")):
        raise ValueError(f"tiered_embedding: ids must be integers, got {ids_dtype}")


def _clamp(x, lo: int, hi: int):
    return tirx.max(tirx.min(x, hi), lo)


def tiered_embedding(m: int, d: int, tiers: Sequence[TierShape], ids_dtype: str = "int64"
                     ) -> tirx.PrimFunc:
    """The gather of ``m`` ids from a ``d``-wide table in ``tiers`` (non-empty, in tier
    order: (q_t, n_t, has offset)), parameters and math in the module docstring."""
    tiers = [(int(q), int(n), bool(o)) for q, n, o in tiers]
    _check(m, d, tiers, ids_dtype)
    v = sum(n for _, n, _ in tiers)
    ids = te.placeholder((m,), ids_dtype, name="ids_i")
    pos = te.placeholder((v,), "int32", name="pos_i32")
    ops = []
    for t, (q, n, offset) in enumerate(tiers):
        ops.append((te.placeholder((q, n, d // 8), "uint8", name=f"planes_{t}_u8"),
                    te.placeholder((n, 1, q), "float32", name=f"alpha_{t}_f32"),
                    te.placeholder((n, 1), "float32", name=f"offset_{t}_f32") if offset
                    else None))
    rows = te.compute((m,), lambda i: _clamp(pos[_clamp(ids[i], 0, v - 1).astype("int32")],
                                             0, v - 1), name="row_i32")
    starts = tier_starts(tiers)

    def decode(t: int, p, k):
        planes, alpha, off = ops[t]
        q, n = tiers[t][:2]
        r = _clamp(p - starts[t], 0, n - 1)
        shift = (k % 8).astype("uint8")
        w = sum(alpha[r, 0, i] * (((planes[i, r, k // 8] >> shift) & tirx.const(1, "uint8"))
                                  .astype("float32") * 2.0 - 1.0) for i in range(q))
        return w + off[r, 0] if off is not None else w

    def lookup(i, k):
        p, out = rows[i], decode(len(tiers) - 1, rows[i], k)
        for t in reversed(range(len(tiers) - 1)):      # tier t when p < s_(t+1)
            out = tirx.if_then_else(p < starts[t + 1], decode(t, p, k), out)
        return out

    out = te.compute((m, d), lookup, name="out_f32")
    params = [ids, pos, *[x for tier in ops for x in tier if x is not None], out]
    return finish(te.create_prim_func(params), KIND,
                  **{INDEX_OPERANDS: [[0, 1, 0]],
                     "lowbit.tiers": [[q, n, int(o)] for q, n, o in tiers]})


def _on_cpu(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule:
    """Per lookup: its row index, then the D outputs in ``VECTOR``-lane vectors; lookups
    parallel above ``PARALLEL_MIN`` outputs (module docstring)."""
    sch = s_tir.Schedule(func)
    rows, out = sch.get_sblock("row_i32"), sch.get_sblock("out_f32")
    i, k = sch.get_loops(out)
    m, d = (int(x) for x in sch.get(out).writes[0].source.shape)
    _, lanes = sch.split(k, [None, VECTOR])      # D % 8 == 0 (the planes' bytes)
    sch.vectorize(lanes)
    if m * d >= PARALLEL_MIN and m > 1:
        sch.parallel(i)
    sch.compute_at(rows, i)
    return sch


registry.register(KIND, "llvm", _on_cpu)
