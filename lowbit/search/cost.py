"""Real stored bytes of a candidate: what the search budgets, scales and zero points included.

For ``R`` rows of a ``K``-wide weight with ``G`` groups per row (``SearchSpace.groups_per_row``),
``s`` = ``scale_bytes`` (4: fp32, 2: fp16), each candidate stores what lowbit's packers store::

    uniform 8     codes R*K            int8/uint8 [N, K] (quantize_weight; pack_vnni moves them);
                                       with int8 inputs (``Candidate.act``) one scale per row
                                       whatever the group (the W8A8 kernel's per-channel weights)
    uniform 4     codes R*ceil(K/2)    two per byte along K (backends/tvm pack_int4)
    uniform 2, 3  codes b*R*ceil(K/8)  b bit planes, 8 per byte (uniform_as_bcq + pack_planes)
                  scales  R*G*s        one per row and group
                  zero points (affine only): 8-bit R*G (uint8); 4-bit ceil(R*G/2) (UINT4, two
                  per byte as ONNX stores them); 2/3-bit R*G*s (the float offset of
                  uniform_as_bcq, as the BCQ kernel reads it)
    bcq b         planes  b*R*ceil(K/8) (pack_planes)   alphas R*G*b*s   offsets R*G*s (if any)
    fp            R*K*fp_bytes
    pruned        0

A linear whose input pruning narrows (o when heads go, FFN-out when neuron blocks go) is
stored at its kept width K' = K - removed, in the group ``SearchSpace.fitted(K')`` gives (the
plan's group if it divides K', else a finer one, else one per row: as ``apply_precision``
stores it), and not at all once K' = 0 (it is removed): ``narrowed_bytes``. A finer group can
make a narrowed linear larger than the full one (more scales than the codes saved): o of
all-MiniLM-L6-v2 in int4 g128 (384 x 384) takes 78,336 bytes whole, 84,480 with one head of
32 columns pruned (K' = 352: group 32), 52,224 with four (K' = 256: group 128).
``PrecisionPlan.total_bytes`` and the integer program count it exactly (``plan.Link``).

Not counted: layout padding a kernel adds at load or compile time (pack_vnni's rows up to a
multiple of 16, pack_bcq's column blocks) and biases (kept in float whatever the choice).
"""

from __future__ import annotations

import math

from lowbit.errors import ConfigError
from lowbit.search.space import Candidate, SearchSpace

__all__ = ["candidate_bytes", "narrowed_bytes", "total_bytes"]


def candidate_bytes(rows: int, k: int, cand: Candidate, space: SearchSpace) -> dict[str, int]:
    """Bytes of ``rows`` rows of a K-wide weight stored as ``cand``: ``codes``, ``scales``
    (uniform scales or BCQ alphas), ``zero_points`` (uniform zero points or BCQ offsets) and
    ``total`` (module docstring)."""
    if rows < 0 or k < 1:
        raise ConfigError(f"candidate_bytes: need rows >= 0 and K >= 1, got {rows}, {k}")
    per_channel = cand.act == "int8"                 # W8A8: per-channel weights
    if cand.code in ("uniform", "bcq") and not per_channel and not space.per_row(k) and \
            k % space.group:
        raise ConfigError(f"candidate_bytes: group={space.group} does not divide K={k}")
    codes = scales = zps = 0
    g = rows * (1 if per_channel else space.groups_per_row(k))   # scale groups in the block
    s = space.scale_bytes
    if cand.code == "fp":
        codes = rows * k * (cand.bits // 8)
    elif cand.code == "bcq":
        codes = cand.bits * rows * math.ceil(k / 8)
        scales = g * cand.bits * s
        zps = g * s if space.bcq_offset else 0
    elif cand.code == "uniform":
        b = cand.bits
        if b == 8:
            codes = rows * k
        elif b == 4:
            codes = rows * math.ceil(k / 2)
        else:  # 2, 3 bits: bit planes (the only sub-4-bit storage lowbit packs); 5-7: same
            codes = b * rows * math.ceil(k / 8)
        scales = g * s
        if not space.symmetric:
            zps = g if b == 8 else math.ceil(g / 2) if b == 4 else g * s
    return {"codes": codes, "scales": scales, "zero_points": zps,
            "total": codes + scales + zps}


def total_bytes(rows: int, k: int, cand: Candidate, space: SearchSpace) -> int:
    return candidate_bytes(rows, k, cand, space)["total"]


def narrowed_bytes(rows: int, k: int, removed: int, cand: Candidate, space: SearchSpace) -> int:
    """Bytes of ``rows`` rows of a K-wide weight stored as ``cand`` once pruning removed
    ``removed`` of its input columns (module docstring): 0 when none is left."""
    if not 0 <= removed <= k:
        raise ConfigError(f"narrowed_bytes: removed={removed} columns of K={k}")
    kept = k - removed
    return 0 if kept == 0 else total_bytes(rows, kept, cand, space.fitted(kept))
