"""Measured kernel latency of a candidate: what a latency budget counts (``ilp.solve(latency=,
latency_budget=)``).

A record is the time of one linear ``y = x W^T + b``, ``x`` [M, K], ``W`` [N, K], stored as a
candidate (``Candidate(code, bits, act)``), compiled alone for one target and run through the
compiled module's VM (``lowbit.measure_latency``, outside this package: it needs the graph
and TVM)::

    raw       median over rounds of the module's forward time (TVM's time evaluator, the
              candidates of one shape interleaved round by round so load drift hits all alike)
    overhead  the same for a module of the same input without a linear (``x * 1.0``): the VM
              call, argument passing, the output's allocation
    seconds   max(raw - overhead, 0)          what ``get`` returns; both raw numbers are kept

so a record holds all the candidate adds around the GEMM: the input's quantization to u8
(int8 inputs) or rounding to half (fp16 inputs), the bias, the output's write.

Keys are ``(n, k, m, code, bits, act)``; a pruned candidate costs 0 and is never measured.
Records live per target in ``<tuning db>/latency/<target key>.json`` (the key of
``backends.tvm.tune``: CPU model, instruction set and a hash of the whole target, so records
of AVX2 and AVX-512 machines, or of other core counts, never mix), written atomically and
merged with what the file holds: measuring the same keys again measures nothing. Each record
also keeps the storage it was measured with (group fitted to K, symmetric, BCQ offset) and
whether the kernels were tuned; ``lowbit.measure_latency`` measures a key again when either
differs from what it is asked.

From records to the search's arrays (``latency_model``)::

    T[s, c] = b_c * rows_s,   A[l, c] once per run of linear l's subgroups that take c
    b_c = (t(N) - t(r)) / (N - r),   A[l, c] = max(t(N) - b_c N, 0)

the line through the times of the whole linear (N rows) and of one subgroup's rows (r, when
the table has them: measure both shapes) for a linear split into subgroups: a block of
consecutive rows of one format is one kernel call (``SplitRowBlocks``), A its fixed part (the
call, the input's pass: what a plan that alternates formats inside a linear pays per block;
``ilp.solve(fixed=)``); without t(r), or for a linear of one subgroup, ``subgroup_latency``:
T[s, c] = t(N) rows_s / N and no fixed part. Pruned: 0.
    (o, FFN-out with pruned feeders: ``plan.narrowings`` scales T by K'/K, 0 once K' = 0)

Not modelled: runs that merge once a pruned subgroup between them leaves (counted as two
calls: an upper bound), the concat of the blocks' outputs. Also not: the epilogue fusions of the real
model (bias, activation, requantized outputs), cache effects between neighbouring kernels, and
the K' scaling of a narrowed linear (the time of a GEMM is not linear in K at
small K). A latency sum is a model of the linears' time, not of the whole model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lowbit.errors import ConfigError
from lowbit.io import read_json, write_text_atomic
from lowbit.search.space import Candidate, Subgroup

__all__ = ["FORMAT", "LatencyTable", "latency_model", "subgroup_latency"]

FORMAT = "lowbit.latency/1"
Key = tuple[int, int, int, str, int, str]       # n, k, m, code, bits, act
_KEY_FIELDS = ("n", "k", "m", "code", "bits", "act")


def latency_key(n: int, k: int, m: int, cand: Candidate) -> Key:
    return (int(n), int(k), int(m), cand.code, int(cand.bits), cand.act)


def _describe(key: Key) -> str:
    n, k, m, code, bits, act = key
    return f"n={n} k={k} m={m} {Candidate(code, bits, act).label()}"


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Measured seconds per key ``(n, k, m, code, bits, act)`` on one target (module
    docstring). ``records`` maps a key to its record: ``seconds`` (net), ``raw_seconds``,
    ``overhead_seconds``, ``lowering`` (the kernel that served it), ``storage``, ``tuned``,
    ``rounds``."""

    target: str
    target_key: str
    records: Mapping[Key, dict] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.target_key, str) or not self.target_key or "/" in self.target_key:
            raise ConfigError(f"LatencyTable.target_key: a folder-safe name, got "
                              f"{self.target_key!r}")
        recs = {}
        for key, rec in dict(self.records).items():
            if not (isinstance(key, tuple) and len(key) == 6):
                raise ConfigError(f"LatencyTable: key {key!r} is not (n, k, m, code, bits, act)")
            latency_key(key[0], key[1], key[2], Candidate(key[3], key[4], key[5]))  # validates
            s = rec.get("seconds") if isinstance(rec, dict) else None
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not s >= 0 \
                    or not np.isfinite(s):
                raise ConfigError(f"LatencyTable: record {_describe(key)} needs seconds >= 0, "
                                  f"got {s!r}")
            recs[key] = dict(rec)
        object.__setattr__(self, "records", recs)

    def __len__(self) -> int:
        return len(self.records)

    def has(self, n: int, k: int, m: int, cand: Candidate) -> bool:
        return cand.pruned or latency_key(n, k, m, cand) in self.records

    def record(self, n: int, k: int, m: int, cand: Candidate) -> dict | None:
        return self.records.get(latency_key(n, k, m, cand))

    def get(self, n: int, k: int, m: int, cand: Candidate) -> float:
        """Net seconds of an [N, K] linear stored as ``cand`` on an [M, K] input (pruned: 0);
        ConfigError naming the key when it was not measured."""
        if cand.pruned:
            return 0.0
        key = latency_key(n, k, m, cand)
        rec = self.records.get(key)
        if rec is None:
            shapes = sorted({(a, b, c) for a, b, c, *_ in self.records})
            raise ConfigError(f"LatencyTable ({self.target_key}): no latency measured for "
                              f"{_describe(key)} (measured shapes n, k, m: {shapes[:6]}"
                              f"{' ...' if len(shapes) > 6 else ''}); measure it with "
                              f"lowbit.measure_latency")
        return float(rec["seconds"])

    def merged(self, other: LatencyTable) -> LatencyTable:
        """This table with ``other``'s records added (``other`` wins on a common key)."""
        if other.target_key != self.target_key:
            raise ConfigError(f"LatencyTable.merged: records of {other.target_key} do not mix "
                              f"with {self.target_key}")
        return dataclasses.replace(self, records={**self.records, **other.records})

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        recs = [{**dict(zip(_KEY_FIELDS, key)), **rec}
                for key, rec in sorted(self.records.items())]
        return {"format": FORMAT, "target": self.target, "target_key": self.target_key,
                "records": recs}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        if not isinstance(d, dict) or d.get("format") != FORMAT or \
                not isinstance(d.get("records"), list):
            raise ConfigError(f"LatencyTable.from_dict: expected format {FORMAT!r} with "
                              f"'records', got {str(d)[:80]!r}")
        recs = {}
        for i, r in enumerate(d["records"]):
            if not isinstance(r, dict) or set(_KEY_FIELDS) - set(r):
                raise ConfigError(f"LatencyTable record {i}: needs the fields {_KEY_FIELDS}")
            key = tuple(r[f] for f in _KEY_FIELDS)
            recs[key] = {f: v for f, v in r.items() if f not in _KEY_FIELDS}
        return cls(str(d.get("target", "")), d.get("target_key", ""), recs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``to_dict()`` as JSON atomically; returns the path."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        return cls.from_dict(read_json(path, "LatencyTable.load", "a latency table"))

    # ---- the tuning database ----------------------------------------------------------------
    @staticmethod
    def path_in(db: str | os.PathLike, target_key: str) -> Path:
        """``<db>/latency/<target key>.json``."""
        return Path(db) / "latency" / f"{target_key}.json"

    @classmethod
    def from_db(cls, db: str | os.PathLike, target_key: str, target: str = "") -> LatencyTable:
        """The records of ``target_key`` in tuning database ``db`` (empty when none)."""
        path = cls.path_in(db, target_key)
        if not path.is_file():
            return cls(target, target_key)
        table = cls.load(path)
        if table.target_key != target_key:
            raise ConfigError(f"{path}: holds records of {table.target_key}, not {target_key}")
        return table

    def save_to_db(self, db: str | os.PathLike) -> Path:
        """Merge into ``<db>/latency/<target key>.json`` (this table wins on a common key)."""
        old = LatencyTable.from_db(db, self.target_key, self.target)
        return old.merged(self).save(self.path_in(db, self.target_key))


# ---- the search's arrays --------------------------------------------------------------------
def _check_m(m: int, what: str) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"{what}: m (rows of the input) must be an int >= 1, got {m!r}")


def subgroup_latency(table: LatencyTable, subgroups: Sequence[Subgroup],
                     candidates: Sequence[Candidate], m: int) -> np.ndarray:
    """T [S, C] seconds: subgroup s as candidate c takes its rows' share of its whole linear's
    kernel, ``t(N, K, m, c) * rows / N`` (module docstring: a linear split into row blocks runs
    one kernel per block, which this share ignores); pruned columns 0."""
    _check_m(m, "subgroup_latency")
    out = np.zeros((len(subgroups), len(candidates)))
    for s, sg in enumerate(subgroups):
        share = (sg.rows[1] - sg.rows[0]) / sg.out_features
        for c, cand in enumerate(candidates):
            out[s, c] = table.get(sg.out_features, sg.in_features, m, cand) * share
    return out


def latency_model(table: LatencyTable, subgroups: Sequence[Subgroup],
                  candidates: Sequence[Candidate], m: int
                  ) -> tuple[np.ndarray, list[tuple[tuple[int, ...], np.ndarray]]]:
    """``T`` [S, C] and the fixed costs ``[(subgroups of a linear, A [C])]`` of the module
    docstring, for ``ilp.solve(latency=T, fixed=...)``."""
    out = subgroup_latency(table, subgroups, candidates, m)
    by: dict[str, list[int]] = {}
    for s, sg in enumerate(subgroups):
        by.setdefault(sg.linear, []).append(s)
    fixed = []
    for idx in by.values():
        sg = subgroups[idx[0]]
        n, k = sg.out_features, sg.in_features
        r = sg.rows[1] - sg.rows[0]
        if len(idx) < 2 or r >= n:
            continue
        live = [c for c, cand in enumerate(candidates) if not cand.pruned]
        if not all(table.has(r, k, m, candidates[c]) for c in live):
            continue
        a = np.zeros(len(candidates))
        for c in live:
            t_n, t_r = table.get(n, k, m, candidates[c]), table.get(r, k, m, candidates[c])
            b = max((t_n - t_r) / (n - r), 0.0)
            a[c] = max(t_n - b * n, 0.0)
            for s in idx:
                rows = subgroups[s].rows[1] - subgroups[s].rows[0]
                out[s, c] = b * rows
        fixed.append((tuple(idx), a))
    return out, fixed
