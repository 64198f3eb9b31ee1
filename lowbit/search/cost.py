"""Real stored bytes of a candidate: what the search budgets, scales and zero points included.

For ``R`` rows of a ``K``-wide weight with ``G`` groups per row (``SearchSpace.groups_per_row``),
``s`` = ``scale_bytes`` (4: fp32, 2: fp16), each candidate stores what lowbit's packers store::

    uniform 8     codes R*K            int8/uint8 [N, K] (quantize_weight; pack_vnni moves them)
    uniform 4     codes R*ceil(K/2)    two per byte along K (backends/tvm pack_int4)
    uniform 2, 3  codes b*R*ceil(K/8)  b bit planes, 8 per byte (uniform_as_bcq + pack_planes)
                  scales  R*G*s        one per row and group
                  zero points (affine only): 8-bit R*G (uint8); 4-bit ceil(R*G/2) (UINT4, two
                  per byte as ONNX stores them); 2/3-bit R*G*s (the float offset of
                  uniform_as_bcq, as the BCQ kernel reads it)
    bcq b         planes  b*R*ceil(K/8) (pack_planes)   alphas R*G*b*s   offsets R*G*s (if any)
    fp            R*K*fp_bytes
    pruned        0

Not counted: layout padding a kernel adds at load or compile time (pack_vnni's rows up to a
multiple of 16, pack_bcq's column blocks), biases (kept in float whatever the choice), and the
input columns of o / FFN-out that a pruned head or neuron group frees (their bytes are counted
as if kept: an over-estimate of a pruned plan's size).
"""

from __future__ import annotations

import math

from lowbit.errors import ConfigError
from lowbit.search.space import Candidate, SearchSpace

__all__ = ["candidate_bytes", "total_bytes"]


def candidate_bytes(rows: int, k: int, cand: Candidate, space: SearchSpace) -> dict[str, int]:
    """Bytes of ``rows`` rows of a K-wide weight stored as ``cand``: ``codes``, ``scales``
    (uniform scales or BCQ alphas), ``zero_points`` (uniform zero points or BCQ offsets) and
    ``total`` (module docstring)."""
    if rows < 0 or k < 1:
        raise ConfigError(f"candidate_bytes: need rows >= 0 and K >= 1, got {rows}, {k}")
    if cand.code in ("uniform", "bcq") and not space.per_row(k) and k % space.group:
        raise ConfigError(f"candidate_bytes: group={space.group} does not divide K={k}")
    codes = scales = zps = 0
    g = rows * space.groups_per_row(k)          # scale groups in the block
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
