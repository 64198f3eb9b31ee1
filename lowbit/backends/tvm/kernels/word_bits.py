"""The per-word mixed-precision gather (``tiered_embedding``): rows of a word table whose tiers
are binary coded at their own widths (``lowbit::tiered_embedding``, lowbit/quant/word_ops.py),
looked up by token id.

The kernel reads the non-empty tiers only, in tier order, each in one of two layouts: the
op's own (``widths=None``: a row's q planes are q contiguous runs of D/8 bytes), or the column
blocks of W rows that the BCQ head kernel reads (``widths[t] = W_t``, kernels/bcq.py), so that
a tied LM head and the lookup share one copy of each tier (lowering/word_bits.py)::

    ids_i      int32 | int64 [M]        token ids (the lookups, flattened)
    pos_i32    int32 [V]                token id -> row of the tier-concatenated row space
    out_f32    float32 [M, D]
    per tier t, op layout               per tier t, block layout (nb_t = ceil(n_t / W_t))
    planes_t   uint8 [q_t, n_t, D/8]    uint8 [nb_t, D/8, q_t, W_t]
    alpha_t    float32 [n_t, 1, q_t]    float32 [nb_t, 1, q_t, W_t]
    offset_t   float32 [n_t, 1]         float32 [nb_t, 1, W_t]       (only tiers with an offset)

Row r of tier t is ``P_t(i, r, c) = planes_t[i, r, c]`` in the op layout and
``planes_t[r // W, c, i, r % W]`` in the block layout (alphas and offsets alike; the block
layout's padding rows are never read). For lookup m, with the static tier starts
``s_t = n_0 + ... + n_(t-1)``::

    p[m]      = clamp(pos[clamp(ids[m], 0, V - 1)], 0, V - 1)
    t         = the tier with s_t <= p[m] < s_(t+1),     r = clamp(p[m] - s_t, 0, n_t - 1)
    out[m, k] = sum_i A_t(r, i) * (2 b_i - 1) (+ O_t(r)),   b_i = (P_t(i, r, k // 8) >> (k % 8)) & 1

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
only the row's own tier is decoded. On CUDA (``_on_cuda``): one thread per lookup and plane
byte (its 8 outputs), ``CUDA_THREADS`` threads per block. In the block layout a row's bytes
lie W apart (one per 64-byte line for W = 64): M rows x q D/8 lines per call, nothing next to
the head's GEMV, which streams the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import s_tir, te, tirx
from tvm.target import Target

from lowbit.backends.tvm.kernels import registry
from lowbit.backends.tvm.kernels.registry import finish

__all__ = ["CUDA_THREADS", "INDEX_OPERANDS", "KIND", "TierShape", "tier_starts",
           "tiered_embedding"]

KIND = "tiered_embedding"
# PrimFunc attribute read by input_bounds.py: [[index param, table param, table axis], ...];
# the values of the index parameter must lie in [0, extent of that axis of the table)
INDEX_OPERANDS = "lowbit.index_operands"
VECTOR = 8             # output lanes per vector (one plane byte)
PARALLEL_MIN = 4096    # outputs (M * D) below which the lookups run on one core
CUDA_THREADS = 128     # threads per CUDA block (each: one lookup x one plane byte, 8 outputs)

TierShape = tuple[int, int, bool]     # (q_t planes, n_t rows, has an offset)


def tier_starts(tiers: Sequence[TierShape]) -> list[int]:
    """``s_t``: the first row of each tier in the tier-concatenated row space."""
    out, start = [], 0
    for _, n, _ in tiers:
        out.append(start)
        start += n
    return out


def _check(m: int, d: int, tiers: Sequence[TierShape], ids_dtype: str,
           widths: Sequence[int] | None) -> None:
    if m < 1 or d < 8 or d % 8:
        raise ValueError(f"tiered_embedding needs M >= 1 lookups and D a multiple of 8, got "
                         f"M={m}, D={d}")
    if not tiers or any(not 1 <= q <= 8 or n < 1 for q, n, _ in tiers):
        raise ValueError(f"tiered_embedding takes non-empty tiers of 1..8 planes, got "
                         f"(q, n, offset) = {list(tiers)}")
    if not ids_dtype.startswith(("int", "uint")):
        raise ValueError(f"tiered_embedding: ids must be integers, got {ids_dtype}")
    if widths is not None and (len(widths) != len(tiers) or any(w < 1 for w in widths)):
        raise ValueError(f"tiered_embedding: widths must give one block width >= 1 per tier "
                         f"({len(tiers)}), got {list(widths)}")


def _clamp(x, lo: int, hi: int):
    return tirx.max(tirx.min(x, hi), lo)


def _operands(t: int, q: int, n: int, d: int, offset: bool, width: int | None):
    """Tier ``t``'s placeholders (None for a missing offset) and its readers ``P(i, r, c)``,
    ``A(r, i)``, ``O(r)`` of row r, in the op layout (``width`` None) or the block layout."""
    if width is None:
        planes = te.placeholder((q, n, d // 8), "uint8", name=f"planes_{t}_u8")
        alpha = te.placeholder((n, 1, q), "float32", name=f"alpha_{t}_f32")
        off = te.placeholder((n, 1), "float32", name=f"offset_{t}_f32") if offset else None
        return ([planes, alpha, off], lambda i, r, c: planes[i, r, c],
                lambda r, i: alpha[r, 0, i], lambda r: off[r, 0])
    nb = -(-n // width)
    planes = te.placeholder((nb, d // 8, q, width), "uint8", name=f"planes_{t}_u8")
    alpha = te.placeholder((nb, 1, q, width), "float32", name=f"alpha_{t}_f32")
    off = te.placeholder((nb, 1, width), "float32", name=f"offset_{t}_f32") if offset else None
    return ([planes, alpha, off], lambda i, r, c: planes[r // width, c, i, r % width],
            lambda r, i: alpha[r // width, 0, i, r % width],
            lambda r: off[r // width, 0, r % width])


def tiered_embedding(m: int, d: int, tiers: Sequence[TierShape], ids_dtype: str = "int64",
                     widths: Sequence[int] | None = None) -> tirx.PrimFunc:
    """The gather of ``m`` ids from a ``d``-wide table in ``tiers`` (non-empty, in tier
    order: (q_t, n_t, has offset)), each tier in the op layout (``widths`` None) or in column
    blocks of ``widths[t]`` rows (the BCQ kernel's); parameters and math in the module
    docstring."""
    tiers = [(int(q), int(n), bool(o)) for q, n, o in tiers]
    widths = None if widths is None else [int(w) for w in widths]
    _check(m, d, tiers, ids_dtype, widths)
    v = sum(n for _, n, _ in tiers)
    ids = te.placeholder((m,), ids_dtype, name="ids_i")
    pos = te.placeholder((v,), "int32", name="pos_i32")
    ops = [_operands(t, q, n, d, o, None if widths is None else widths[t])
           for t, (q, n, o) in enumerate(tiers)]
    rows = te.compute((m,), lambda i: _clamp(pos[_clamp(ids[i], 0, v - 1).astype("int32")],
                                             0, v - 1), name="row_i32")
    starts = tier_starts(tiers)

    def decode(t: int, p, k):
        (q, n, has_offset), (_, plane, alpha, off) = tiers[t], ops[t]
        r = _clamp(p - starts[t], 0, n - 1)
        shift = (k % 8).astype("uint8")
        w = sum(alpha(r, i) * (((plane(i, r, k // 8) >> shift) & tirx.const(1, "uint8"))
                               .astype("float32") * 2.0 - 1.0) for i in range(q))
        return w + off(r) if has_offset else w

    def lookup(i, k):
        p, out = rows[i], decode(len(tiers) - 1, rows[i], k)
        for t in reversed(range(len(tiers) - 1)):      # tier t when p < s_(t+1)
            out = tirx.if_then_else(p < starts[t + 1], decode(t, p, k), out)
        return out

    out = te.compute((m, d), lookup, name="out_f32")
    params = [ids, pos, *[x for tier in ops for x in tier[0] if x is not None], out]
    attrs = {INDEX_OPERANDS: [[0, 1, 0]], "lowbit.tiers": [[q, n, int(o)] for q, n, o in tiers]}
    if widths is not None:
        attrs["lowbit.widths"] = widths
    return finish(te.create_prim_func(params), KIND, **attrs)


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


def _on_cuda(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule:
    """One thread per lookup and plane byte (its 8 outputs unrolled), ``CUDA_THREADS`` per
    block; each thread computes its row index once (module docstring)."""
    sch = s_tir.Schedule(func)
    rows, out = sch.get_sblock("row_i32"), sch.get_sblock("out_f32")
    i, k = sch.get_loops(out)
    byte, lanes = sch.split(k, [None, VECTOR])
    block, thread = sch.split(sch.fuse(i, byte), [None, CUDA_THREADS])
    sch.bind(block, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")
    sch.unroll(lanes)
    sch.compute_at(rows, thread)          # the thread's row index, in a register
    sch.set_scope(rows, 0, "local")
    return sch


registry.register(KIND, "llvm", _on_cpu)
registry.register(KIND, "cuda", _on_cuda)
