"""Per-word mixed-precision embeddings (Chung et al., EMNLP Findings 2020).

Each row of a word-embedding table ``E`` [V, D] gets its own bit width from the frequency of its
token: frequent words more bits. Tokens are ranked by ``(count descending, id ascending)`` and
the ranking is cut into ``T`` tiers; tier ``t`` holds ``n_t`` consecutive ranks and is coded
with ``bits[t]`` bits (``bits`` strictly descending, 1..4)::

    n_t ~ V * r^t / sum_{j<T} r^j          (the paper's rule: bits = (b, b-1, ..., 1), T = b)
    average code bits = sum_t n_t * bits[t] / V          (scales and the remap not included)

``b = 4, r = 2`` gives sizes 1:2:4:8 of 15 and ``(4*1 + 3*2 + 2*4 + 1*8) / 15 = 26/15 ~ 1.73``
bits. Rounding: the cumulative boundaries ``C_k = round(V * sum_{t<k} n_t / V)`` are rounded,
not the sizes, so the rows sum to V, every size is within one row of its proportional share,
and every boundary (hence the average) is monotone in ``r``.

Unseen tokens (``unseen=``). A token with count 0 has no evidence of use in the counting text.

* ``"lowest"`` (default; the paper's wording): all of them take the lowest tier. If the rule's
  lowest tier is smaller than the ``U`` unseen tokens, it is extended upward to the last ``U``
  ranks, and the tiers above lose their lowest-ranked rows (``C_k <- min(C_k, V - U)``; the
  tier just above the lowest shrinks first). The average is then non-increasing in ``r`` and
  spans ``[bits[-1], (bits[0] (V - U) + bits[-1] U) / V]``.
* ``"rank"``: unseen tokens are ranked after the seen ones by id ascending (the ranking's own
  tie rule) and the boundaries are not clamped, so a tier boundary may cut through them and
  every average in ``[bits[-1], bits[0]]`` is reachable. This relies on the vocabulary being
  ordered by usefulness, as SentencePiece vocabularies are (by piece score). Measured on
  Gemma-3's 262,144-piece vocabulary (``benchmarks/gemma_word_bits.py``): of the ids unseen in
  SST-2 train + Python's pydoc topics (241,405), the fraction that does occur in held-out
  WikiText-2 falls with the id decile, 18.5%, 11.2%, 7.7%, 5.1%, 3.8%, 2.9%, 2.4%, 2.0%,
  1.6%, 0.3%: a low unseen id is ~60x likelier to be used than a high one. With few counted
  tokens (Gemma: 87.5% of ids unseen in 1.2M tokens) "lowest" leaves most averages
  unreachable; "rank" does not.

Either way the average is non-increasing in ``r``: ``plan_for_budget`` solves for ``r`` by
bisection on ``log r`` inside the range and refuses targets outside it.

Groups (``group=``). ``None``: one alpha set (and offset) per row, as the paper. An int ``g``
(a multiple of 8 dividing D): one per ``g`` consecutive columns of a row, ``D / g`` per row,
as llama.cpp's block formats (Q4_0: groups of 32). Average code bits counts the planes only;
``TieredEmbedding.bits_per_element`` adds the fp16 scales (``16 * a / g`` bits for ``a``
scale values per group: BCQ ``q`` alphas, uniform one scale and one offset) and the remap, so
tables can be compared at equal bytes.

Each tier is a ``BCQWeight`` over its rows (ascending token id): BCQ (``bcq.fit``) or
asymmetric uniform written as BCQ (``bcq.uniform_as_bcq``), per row or per ``group``. A
lookup goes through the remap: token ``id`` is row ``row[id]`` of tier ``tier[id]``.

The plan (``WordBitsPlan``) is plain data the user can inspect, edit (``with_tier``) and save
as JSON together with the counts it came from.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from lowbit.errors import ConfigError
from lowbit.io import read_json, write_text_atomic
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.quant import bcq

__all__ = [
    "FORMAT",
    "METHODS",
    "UNSEEN",
    "TieredEmbedding",
    "WordBitsPlan",
    "feasible_range",
    "frequency_blind",
    "plan_by_rule",
    "plan_for_budget",
    "quantize_embedding",
    "token_counts",
]

METHODS = ("bcq", "uniform")
UNSEEN = ("lowest", "rank")     # where unseen tokens go (module docstring)
FORMAT = "lowbit.word_bits/1"
SCALE_BYTES = 2         # alphas, offsets and uniform scales are counted as fp16
REMAP_BYTES = 4         # one int32 per token: tier in the top 2 bits, row within tier below
_LOG_R_SPAN = 60.0      # bisection on log r in [-60, 60]: e^-60 * V rounds to 0 rows
_BISECT_STEPS = 200
_FIT_CHUNK = 16384      # rows per bcq.fit call (per-row fits are independent; bounds memory)


# ---- counting ------------------------------------------------------------------------------

def token_counts(texts: Iterable[str], tokenizer, vocab_size: int, *, batch: int = 256,
                 progress: bool = True) -> torch.Tensor:
    """How often each token id occurs in ``texts``, int64 [vocab_size].

    ``tokenizer`` is called as a Hugging Face tokenizer is,
    ``tokenizer(list_of_texts, add_special_tokens=False)["input_ids"]`` (a list of id lists),
    ``batch`` texts at a time; no special tokens (BOS/EOS) are counted. An id outside
    ``0..vocab_size-1`` raises ConfigError (the tokenizer does not match the table)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"token_counts: vocab_size must be an int >= 1, got {vocab_size!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"token_counts: batch must be an int >= 1, got {batch!r}")
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    it, done, t0 = iter(texts), 0, time.perf_counter()
    with progress_bar(total=_length(texts), desc="counting tokens", unit="text",
                      enabled=progress) as shown:
        while chunk := list(itertools.islice(it, batch)):
            ids = [torch.as_tensor(x, dtype=torch.int64)
                   for x in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
            flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
            if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
                bad = int(flat.max()) if int(flat.max()) >= vocab_size else int(flat.min())
                raise ConfigError(f"token_counts: the tokenizer produced id {bad}, outside the "
                                  f"table's 0..{vocab_size - 1}: tokenizer and embedding "
                                  f"differ")
            counts += torch.bincount(flat, minlength=vocab_size)
            done += len(chunk)
            shown.update(len(chunk))
    say(f"counted {done} text(s), {int(counts.sum())} tokens, {time.perf_counter() - t0:.1f} s",
        enabled=progress)
    return counts


def _length(texts: Iterable[str]) -> int | None:
    """``len(texts)`` where it has one (a list), else None (a generator: the bar counts up)."""
    try:
        return len(texts)  # type: ignore[arg-type]
    except TypeError:
        return None


def _as_counts(counts, name: str) -> torch.Tensor:
    """Validated counts: int64 [V], V >= 1, all >= 0."""
    c = torch.as_tensor(counts)
    if c.dim() != 1 or c.numel() < 1 or c.is_floating_point() or c.is_complex() \
            or c.dtype == torch.bool:
        raise ConfigError(f"{name}: counts must be a non-empty 1-D integer tensor [V], got "
                          f"{c.dtype} of shape {tuple(c.shape)}")
    c = c.to(torch.int64).cpu()
    if (c < 0).any():
        raise ConfigError(f"{name}: counts must be >= 0 (token {int((c < 0).nonzero()[0])} "
                          f"has {int(c[(c < 0).nonzero()[0]])})")
    return c


# ---- the plan ------------------------------------------------------------------------------

def _check_bits(bits, name: str) -> tuple[int, ...]:
    try:
        bits = tuple(bits)
    except TypeError:
        raise ConfigError(f"{name}: bits must be a sequence of ints, got {bits!r}") from None
    if not bits or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= bcq.MAX_BITS
                       for b in bits):
        raise ConfigError(f"{name}: bits must be one or more ints in 1..{bcq.MAX_BITS}, "
                          f"got {bits!r}")
    if any(a <= b for a, b in itertools.pairwise(bits)):
        raise ConfigError(f"{name}: bits must be strictly descending (tier 0 = most frequent "
                          f"words = most bits), got {bits!r}")
    return bits


def _check_group(group, name: str) -> None:
    """None, or an int >= 8 that is a multiple of 8 (planes pack 8 columns per byte, so a
    group never splits a byte); that it divides D is checked where D is known."""
    if group is not None and (isinstance(group, bool) or not isinstance(group, int)
                              or group < 8 or group % 8):
        raise ConfigError(f"{name}: group must be None (one alpha set per row) or a positive "
                          f"multiple of 8 (columns per alpha set), got {group!r}")


def _check_unseen(unseen, name: str) -> str:
    if unseen not in UNSEEN:
        raise ConfigError(f"{name}: unseen must be one of {UNSEEN}, got {unseen!r}")
    return unseen


@dataclasses.dataclass(frozen=True, eq=False)
class WordBitsPlan:
    """Which bit width each token's embedding row gets.

    ``bits[t]``: code bits of tier ``t`` (strictly descending; tier 0 = most frequent words);
    ``tier`` int64 [V]: the tier of every token id; ``counts`` int64 [V] or None: the token
    counts the plan came from (kept so the plan can be rebuilt and checked); ``method``:
    "bcq" (BCQ) or "uniform" (asymmetric uniform, written as BCQ); ``r``: the
    cluster ratio the plan was derived with (None for hand-made or edited plans); ``group``:
    columns per alpha set along D (None: one per row; else a multiple of 8 that must divide D);
    ``unseen``: the unseen-token rule the plan was derived with ("lowest" or "rank"; None for
    hand-made or edited plans). Any tier may be empty. Plans are plain data: read ``tier``,
    edit with ``with_tier``, save as JSON."""

    bits: tuple[int, ...]
    tier: torch.Tensor
    counts: torch.Tensor | None = None
    method: str = "bcq"
    r: float | None = None
    group: int | None = None
    unseen: str | None = None

    def __post_init__(self) -> None:
        name = "WordBitsPlan"
        object.__setattr__(self, "bits", _check_bits(self.bits, name))
        if self.method not in METHODS:
            raise ConfigError(f"{name}: method must be one of {METHODS}, got {self.method!r}")
        t = torch.as_tensor(self.tier)
        if t.dim() != 1 or t.numel() < 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ConfigError(f"{name}: tier must be a non-empty 1-D integer tensor [V], got "
                              f"{t.dtype} of shape {tuple(t.shape)}")
        t = t.to(torch.int64).cpu().contiguous()
        if int(t.min()) < 0 or int(t.max()) >= len(self.bits):
            raise ConfigError(f"{name}: tier values must lie in 0..{len(self.bits) - 1} (one "
                              f"per entry of bits={self.bits}), got {int(t.min())}.."
                              f"{int(t.max())}")
        object.__setattr__(self, "tier", t)
        if self.counts is not None:
            c = _as_counts(self.counts, name)
            if c.numel() != t.numel():
                raise ConfigError(f"{name}: counts has {c.numel()} entries, tier has "
                                  f"{t.numel()}: both are one per token id")
            object.__setattr__(self, "counts", c)
        if self.r is not None and not (isinstance(self.r, (int, float)) and self.r > 0
                                       and math.isfinite(self.r)):
            raise ConfigError(f"{name}: r must be a finite number > 0 or None, got {self.r!r}")
        _check_group(self.group, name)
        if self.unseen is not None and self.unseen not in UNSEEN:
            raise ConfigError(f"{name}: unseen must be one of {UNSEEN} or None, got "
                              f"{self.unseen!r}")

    @property
    def vocab_size(self) -> int:
        return self.tier.numel()

    @property
    def tier_sizes(self) -> tuple[int, ...]:
        return tuple(torch.bincount(self.tier, minlength=len(self.bits)).tolist())

    @property
    def average_bits(self) -> float:
        """Code bits per element, ``sum_t n_t bits[t] / V`` (scales and remap excluded)."""
        return sum(n * b for n, b in zip(self.tier_sizes, self.bits)) / self.vocab_size

    def rows(self, t: int) -> torch.Tensor:
        """Token ids of tier ``t``, ascending: the order of tier ``t``'s table rows."""
        self._check_tier(t)
        return (self.tier == t).nonzero().flatten()

    def remap(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tier, row)``, both int64 [V]: token ``id`` is row ``row[id]`` of tier
        ``tier[id]``'s table (``rows(tier[id])[row[id]] == id``)."""
        row = torch.empty_like(self.tier)
        for t in range(len(self.bits)):
            ids = self.rows(t)
            row[ids] = torch.arange(ids.numel())
        return self.tier.clone(), row

    def with_tier(self, ids, t: int) -> WordBitsPlan:
        """A copy with tokens ``ids`` (an int or a sequence of ints) moved to tier ``t``; this
        plan is not changed. The copy's ``r`` and ``unseen`` are None: it no longer follows a
        rule."""
        self._check_tier(t)
        ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(f"WordBitsPlan.with_tier: token ids must lie in 0.."
                              f"{self.vocab_size - 1}, got {int(ids.min())}..{int(ids.max())}")
        tier = self.tier.clone()
        tier[ids] = t
        return dataclasses.replace(self, tier=tier, r=None, unseen=None)

    def _check_tier(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(self.bits):
            raise ConfigError(f"WordBitsPlan: tier {t!r} does not exist (tiers 0.."
                              f"{len(self.bits) - 1} for bits={self.bits})")

    def to_dict(self) -> dict:
        """JSON-able: format tag, method, group, bits, r, unseen, tier and counts as lists of
        ints."""
        return {"format": FORMAT, "method": self.method, "group": self.group,
                "bits": list(self.bits), "r": self.r, "unseen": self.unseen,
                "tier": self.tier.tolist(),
                "counts": None if self.counts is None else self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> WordBitsPlan:
        """Inverse of ``to_dict``. Plans written before ``group`` and ``unseen`` existed load
        with ``group=None`` (per row, what they were fitted with) and, where they carry an
        ``r`` (derived by the rule), ``unseen="lowest"`` (the only rule there was)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"WordBitsPlan.from_dict: not a {FORMAT} plan (format="
                              f"{d.get('format') if isinstance(d, dict) else type(d).__name__!r})")
        missing = {"method", "bits", "tier"} - d.keys()
        if missing:
            raise ConfigError(f"WordBitsPlan.from_dict: missing {sorted(missing)}")
        counts = d.get("counts")
        return cls(bits=tuple(d["bits"]), tier=torch.tensor(d["tier"], dtype=torch.int64),
                   counts=None if counts is None else torch.tensor(counts, dtype=torch.int64),
                   method=d["method"], r=d.get("r"), group=d.get("group"),
                   unseen=d.get("unseen", "lowest" if d.get("r") is not None else None))

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` as JSON atomically (a temporary file, then ``os.replace``)."""
        write_text_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> WordBitsPlan:
        return cls.from_dict(read_json(path, "WordBitsPlan.load"))


# ---- allocation ----------------------------------------------------------------------------

def _ranking(counts: torch.Tensor) -> torch.Tensor:
    """Token ids by (count descending, id ascending): a stable descending sort."""
    return torch.sort(counts, descending=True, stable=True).indices


def _boundaries(v: int, unseen: int, tiers: int, log_r: float) -> list[int]:
    """Cumulative rows ``[C_0 = 0, C_1, ..., C_T = V]``: ``C_k = round(V sum_{t<k} w_t)``,
    ``w_t = r^t / sum_j r^j``, then ``C_k <- min(C_k, V - U)`` for ``k < T`` (the "lowest"
    unseen rule; ``unseen=0`` for "rank": nothing clamped)."""
    logs = [t * log_r for t in range(tiers)]
    top = max(logs)
    w = [math.exp(x - top) for x in logs]
    total = sum(w)
    out, acc = [0], 0.0
    for k in range(1, tiers):
        acc += w[k - 1]
        out.append(min(math.floor(v * acc / total + 0.5), v - unseen))
    return out + [v]


def _average(bounds: list[int], bits: tuple[int, ...]) -> float:
    v = bounds[-1]
    return sum((hi - lo) * b for lo, hi, b in zip(bounds, bounds[1:], bits)) / v


def _clamped(counts: torch.Tensor, unseen: str) -> int:
    """Rows the boundaries must leave to the lowest tier: the unseen count for "lowest", 0
    for "rank" (unseen tokens are ranked by id after the seen ones and cut like them)."""
    return int((counts == 0).sum()) if unseen == "lowest" else 0


def _plan(counts: torch.Tensor, bits: tuple[int, ...], log_r: float, method: str,
          group: int | None, unseen: str) -> WordBitsPlan:
    v = counts.numel()
    bounds = _boundaries(v, _clamped(counts, unseen), len(bits), log_r)
    tier_of_rank = torch.bucketize(torch.arange(v), torch.tensor(bounds[1:-1]), right=True)
    tier = torch.empty(v, dtype=torch.int64)
    tier[_ranking(counts)] = tier_of_rank
    return WordBitsPlan(bits, tier, counts, method, math.exp(log_r), group, unseen)


def plan_by_rule(counts, b: int = 4, r: float = 2.0, *, method: str = "bcq",
                 group: int | None = None, unseen: str = "lowest") -> WordBitsPlan:
    """The paper's rule: ``b`` tiers with sizes proportional to ``r^i``, tier ``i`` coded with
    ``b - i`` bits (module docstring); unseen tokens (count 0) all in the 1-bit tier
    (``unseen="lowest"``) or ranked by id after the seen ones (``"rank"``).

    ``counts``: int [V] token counts (``token_counts`` or the user's own); ``method`` and
    ``group``: how ``quantize_embedding`` fits the tiers (``WordBitsPlan``)."""
    if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= bcq.MAX_BITS:
        raise ConfigError(f"plan_by_rule: b must be an int in 1..{bcq.MAX_BITS}, got {b!r}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and r > 0):
        raise ConfigError(f"plan_by_rule: r must be a finite number > 0, got {r!r}")
    _check_unseen(unseen, "plan_by_rule")
    counts = _as_counts(counts, "plan_by_rule")
    return _plan(counts, tuple(range(b, 0, -1)), math.log(r), method, group, unseen)


def feasible_range(counts, bits: Sequence[int] = (4, 3, 2, 1), *, unseen: str = "lowest"
                   ) -> tuple[float, float]:
    """Average code bits reachable by ``plan_for_budget`` with these tier bits: from
    ``bits[-1]`` (every row in the lowest tier) to ``(bits[0] (V - U) + bits[-1] U) / V``
    (every seen token in the top tier, the ``U`` unseen ones in the lowest) with
    ``unseen="lowest"``, to ``bits[0]`` with ``"rank"``."""
    bits = _check_bits(bits, "feasible_range")
    _check_unseen(unseen, "feasible_range")
    counts = _as_counts(counts, "feasible_range")
    v, clamped = counts.numel(), _clamped(counts, unseen)
    return float(bits[-1]), (bits[0] * (v - clamped) + bits[-1] * clamped) / v


def plan_for_budget(counts, avg_bits: float, bits: Sequence[int] = (4, 3, 2, 1), *,
                    method: str = "bcq", group: int | None = None, unseen: str = "lowest"
                    ) -> WordBitsPlan:
    """The rule's tiers with ``bits`` per tier and ``r`` solved so the average code bits is as
    close to ``avg_bits`` as whole rows allow.

    The average is non-increasing in ``r`` (module docstring), a step function that moves by at
    most ``(bits[0] - bits[-1]) / V`` at a time, so bisection on ``log r`` in [-60, 60] ends at
    a step that straddles the target, and the closer side is returned:
    ``|average_bits - avg_bits| <= (bits[0] - bits[-1]) / V``. A target outside
    ``feasible_range(counts, bits, unseen=unseen)`` raises ConfigError naming the range (and,
    for ``unseen="lowest"``, the unseen count)."""
    bits = _check_bits(bits, "plan_for_budget")
    _check_unseen(unseen, "plan_for_budget")
    counts = _as_counts(counts, "plan_for_budget")
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)) \
            or not math.isfinite(avg_bits):
        raise ConfigError(f"plan_for_budget: avg_bits must be a finite number, got {avg_bits!r}")
    lo_bits, hi_bits = feasible_range(counts, bits, unseen=unseen)
    v, clamped = counts.numel(), _clamped(counts, unseen)
    eps = 1e-9
    if not lo_bits - eps <= avg_bits <= hi_bits + eps:
        why = (f"{clamped} of {v} tokens are unseen and must take the lowest tier's "
               f"{bits[-1]} bit(s); choose a target in that range, other tier bits, counts "
               f"from more text, or unseen='rank'" if clamped else
               "choose a target in that range or other tier bits")
        raise ConfigError(
            f"plan_for_budget: average {avg_bits:g} bits cannot be met with tiers bits={bits}: "
            f"the feasible range is [{lo_bits:.4f}, {hi_bits:.4f}] ({why})")
    def plan(log_r: float) -> WordBitsPlan:
        return _plan(counts, bits, log_r, method, group, unseen)

    lo, hi = -_LOG_R_SPAN, _LOG_R_SPAN         # average(lo) >= target > average(hi)
    if _average(_boundaries(v, clamped, len(bits), hi), bits) >= avg_bits:
        return plan(hi)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _average(_boundaries(v, clamped, len(bits), mid), bits) >= avg_bits:
            lo = mid
        else:
            hi = mid
    a_lo = _average(_boundaries(v, clamped, len(bits), lo), bits)
    a_hi = _average(_boundaries(v, clamped, len(bits), hi), bits)
    return plan(lo if abs(a_lo - avg_bits) <= abs(a_hi - avg_bits) else hi)


def frequency_blind(plan: WordBitsPlan, seed: int = 0) -> WordBitsPlan:
    """A control: the same bits and tier sizes, tokens assigned to tiers by a seeded random
    permutation instead of by frequency (``tier'[id] = tier[perm[id]]``). Counts, method and
    group are kept; ``r`` and ``unseen`` are None. Unseen tokens land anywhere."""
    perm = torch.randperm(plan.vocab_size, generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(plan, tier=plan.tier[perm], r=None, unseen=None)


# ---- the quantized table -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class TieredEmbedding:
    """A quantized [V, D] table: ``tiers[t]`` is a ``BCQWeight`` over the rows
    ``plan.rows(t)`` (ascending token id) with ``plan.bits[t]`` planes and ``plan.group``
    columns per alpha set (one set per row when the plan's group is None)."""

    plan: WordBitsPlan
    tiers: tuple[bcq.BCQWeight, ...]

    def __post_init__(self) -> None:
        tiers = tuple(self.tiers)
        if len(tiers) != len(self.plan.bits):
            raise ConfigError(f"TieredEmbedding: {len(tiers)} tier tables for "
                              f"{len(self.plan.bits)} tiers")
        dims = {w.shape[1] for w in tiers}
        if len(dims) != 1:
            raise ConfigError(f"TieredEmbedding: tiers differ in width: {sorted(dims)}")
        d = dims.pop()
        g = d if self.plan.group is None else self.plan.group
        for t, (w, n, b) in enumerate(zip(tiers, self.plan.tier_sizes, self.plan.bits)):
            if w.shape[0] != n or w.bits != b or w.group != g:
                raise ConfigError(f"TieredEmbedding: tier {t} holds a {w.bits}-bit "
                                  f"{w.shape} table with {w.groups} group(s) of {w.group} per "
                                  f"row; the plan says {n} rows at {b} bits, groups of {g}")
        object.__setattr__(self, "tiers", tiers)

    @property
    def dim(self) -> int:
        return self.tiers[0].shape[1]

    def dequantize(self) -> torch.Tensor:
        """The float32 [V, D] table: row ``id`` = tier ``tier[id]``'s row ``row[id]``."""
        out = torch.empty(self.plan.vocab_size, self.dim)
        for t, w in enumerate(self.tiers):
            out[self.plan.rows(t)] = _dequantize_rows(w)
        return out

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows for token ``ids`` (any shape) through the remap, float32 [*ids.shape, D],
        dequantizing only the rows asked for."""
        ids = torch.as_tensor(ids, dtype=torch.int64)
        tier, row = self.plan.remap()
        flat = ids.flatten()
        out = torch.empty(flat.numel(), self.dim)
        for t, w in enumerate(self.tiers):
            sel = (tier[flat] == t).nonzero().flatten()
            if sel.numel():
                out[sel] = _dequantize_rows(_take_rows(w, row[flat[sel]]))
        return out.reshape(*ids.shape, self.dim)

    def nbytes(self) -> dict[str, int]:
        """Storage in bytes: ``planes`` (bits packed 8 per byte along each row, rows padded to
        whole bytes), ``alpha`` (per row and group, ``D / group`` groups per row: ``bits``
        alphas for "bcq", one scale for "uniform", whose alphas are ``s 2^(i-1)``), ``offset``
        (one per row and group where the fit has offsets), all scale values counted as fp16
        (2 bytes); ``remap`` (one int32 per token: tier and row within tier; 0 when only one
        tier holds rows: its rows are in id order); ``total``."""
        planes = alpha = offset = 0
        for w in self.tiers:
            n, k = w.shape
            planes += w.bits * n * math.ceil(k / 8)
            alpha += n * w.groups * (w.bits if self.plan.method == "bcq" else 1) * SCALE_BYTES
            offset += n * w.groups * SCALE_BYTES if w.offset_f32 is not None else 0
        used = sum(n > 0 for n in self.plan.tier_sizes)
        remap = REMAP_BYTES * self.plan.vocab_size if used > 1 else 0
        return {"planes": planes, "alpha": alpha, "offset": offset, "remap": remap,
                "total": planes + alpha + offset + remap}

    def bits_per_element(self) -> dict[str, float]:
        """Storage per table element (``V * D`` of them) in bits: ``code`` (the plan's average
        code bits), ``scales`` (+ fp16 alphas and offsets), ``total`` (+ the remap): the
        honest figure for comparing tables of different groups at equal bytes."""
        nb, elems = self.nbytes(), self.plan.vocab_size * self.dim
        scales = nb["planes"] + nb["alpha"] + nb["offset"]
        return {"code": self.plan.average_bits, "scales": 8 * scales / elems,
                "total": 8 * nb["total"] / elems}


def _take_rows(w: bcq.BCQWeight, rows) -> bcq.BCQWeight:
    return bcq.BCQWeight(w.planes_i8[:, rows], w.alpha_f32[rows],
                         None if w.offset_f32 is None else w.offset_f32[rows], w.group)


def _dequantize_rows(w: bcq.BCQWeight, chunk: int = _FIT_CHUNK) -> torch.Tensor:
    """``w.dequantize()`` in row chunks (a 4-bit [262144, 640] table would need 2.7 GB of
    float planes at once)."""
    n = w.shape[0]
    if n <= chunk:
        return w.dequantize()
    return torch.cat([_take_rows(w, slice(i, i + chunk)).dequantize() for i in range(0, n, chunk)])


def _fit_rows(w: torch.Tensor, bits: int, method: str, group: int | None, iters: int
              ) -> bcq.BCQWeight:
    """One tier's fit, ``_FIT_CHUNK`` rows per call: each row's fit depends on that row only,
    so chunking changes nothing but memory."""
    parts = [bcq.fit(c, bits, group, iters) if method == "bcq"
             else bcq.uniform_as_bcq(c, bits, group)
             for c in (w.split(_FIT_CHUNK) if w.shape[0] else [w])]
    if len(parts) == 1:
        return parts[0]
    off = None if parts[0].offset_f32 is None else torch.cat([p.offset_f32 for p in parts])
    return bcq.BCQWeight(torch.cat([p.planes_i8 for p in parts], 1),
                         torch.cat([p.alpha_f32 for p in parts]), off, parts[0].group)


def quantize_embedding(weight: torch.Tensor, plan: WordBitsPlan, *,
                       iters: int = bcq.DEFAULT_ITERS, progress: bool = True
                       ) -> TieredEmbedding:
    """Quantize ``weight`` [V, D] tier by tier: tier ``t``'s rows (``plan.rows(t)``) with
    ``bcq.fit(rows, bits[t], plan.group, iters)`` ("bcq") or ``bcq.uniform_as_bcq(rows,
    bits[t], plan.group)`` ("uniform"); ``plan.group`` must divide D."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 \
            or weight.shape[0] != plan.vocab_size or not weight.is_floating_point():
        raise ConfigError(f"quantize_embedding: weight must be a float [V={plan.vocab_size}, "
                          f"D] table, got {getattr(weight, 'shape', type(weight).__name__)}")
    if plan.group is not None and weight.shape[1] % plan.group:
        raise ConfigError(f"quantize_embedding: the plan's group={plan.group} does not divide "
                          f"the table's width D={weight.shape[1]}")
    weight = weight.detach().to(torch.float32)
    tiers, t0 = [], time.perf_counter()
    what = f"word bits ({plan.method}{_group_note(plan)})"
    for t, b in enumerate(progress_bar(plan.bits, desc=f"{what}: tiers", unit="tier",
                                       enabled=progress)):
        tiers.append(_fit_rows(weight[plan.rows(t)], b, plan.method, plan.group, iters))
    say(f"{what}: {len(plan.bits)} tier(s), average {plan.average_bits:.3f} bits, done, "
        f"{time.perf_counter() - t0:.1f} s", enabled=progress)
    return TieredEmbedding(plan, tuple(tiers))


def _group_note(plan: WordBitsPlan) -> str:
    return "" if plan.group is None else f", groups of {plan.group}"
