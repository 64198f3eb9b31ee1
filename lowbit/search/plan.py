"""The precision plan: what the search chose for every subgroup, as plain data the user can
read, edit and save. Each entry also names its linear's input (``act``: "fp", "fp16", or
"int8" with int8 weights: ``lowbit.search.space``); the kept entries of a linear agree on it
(``activations``: the linears whose input is not "fp").

    plan.summary()                          # a text table, one line per linear
    plan.save("plan.json"); plan = PrecisionPlan.load("plan.json")      # atomic JSON
    plan = plan.edit("encoder.layer.0.attention.self.query[0:32]", code="pruned", bits=0)
    plan = plan.edit_activation("encoder.layer.0.attention.self.query", "fp16")

Every construction (search, ``load``, ``edit``, the constructor) validates: each entry a valid
candidate (``space.Candidate``) whose format fits its linear's width, ``pruned`` agreeing with
the code, the entries of a linear covering its rows exactly once, tied entries pruned alike. A
ConfigError names the entry (index and ``linear[a:b]``). Bytes and average bits come from
``lowbit.search.cost`` with the plan's ``SearchSpace`` (its storage settings).

``links`` (``Link``, one per o / FFN-out whose input columns pruning removes; the searches
write them from the graph) make ``total_bytes`` what ``apply_precision`` leaves: a linear
whose feeding heads / neuron blocks are pruned is counted at its kept width
(``cost.narrowed_bytes``), and not at all when none is left; the linears only a linear
pruned whole reads (q, k, v of a pruned o; up, gate of a pruned down) are counted 0. A plan
without links (hand-written, or saved before 2026-12-04) counts every linear at full width.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from lowbit.errors import ConfigError
from lowbit.io import read_json, write_text_atomic
from lowbit.search.cost import narrowed_bytes
from lowbit.search.ilp import Narrowing
from lowbit.search.space import Candidate, SearchSpace, Subgroup

__all__ = ["Link", "PlanEntry", "PrecisionPlan", "narrowings"]

_LINK_FIELDS = ("sink", "feeders", "width", "reads")
_FIELDS = ("linear", "role", "rows", "in_features", "out_features", "code", "bits", "pruned")


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """Rows ``rows[0]:rows[1]`` of linear ``linear`` ([out_features, in_features]) stored as
    ``code`` at ``bits`` (``pruned``: removed), its linear's input as ``act``.
    ``sensitivity``: the search's estimate for this choice (None once edited)."""

    linear: str
    role: str
    rows: tuple[int, int]
    in_features: int
    out_features: int
    code: str
    bits: int
    pruned: bool = False
    tie: str | None = None
    sensitivity: float | None = None
    act: str = "fp"

    @property
    def name(self) -> str:
        a, b = self.rows
        return self.linear if (a, b) == (0, self.out_features) else f"{self.linear}[{a}:{b}]"

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.code, self.bits, self.act)

    @property
    def elements(self) -> int:
        return (self.rows[1] - self.rows[0]) * self.in_features

    def _check(self, i: int, space: SearchSpace) -> None:
        r = self.rows
        span = f"[{r[0]}:{r[1]}]" if isinstance(r, tuple) and len(r) == 2 else f" rows={r!r}"
        where = f"PrecisionPlan entry {i} ({self.linear}{span})"

        def ints(*v: object) -> bool:
            return all(isinstance(x, int) and not isinstance(x, bool) for x in v)

        if not isinstance(self.linear, str) or not self.linear:
            raise ConfigError(f"{where}: linear must be a non-empty name")
        if not (isinstance(self.rows, tuple) and len(self.rows) == 2 and ints(*self.rows)
                and ints(self.in_features, self.out_features) and self.in_features >= 1
                and 0 <= self.rows[0] < self.rows[1] <= self.out_features):
            raise ConfigError(f"{where}: rows must be (a, b) with 0 <= a < b <= out_features="
                              f"{self.out_features!r}, in_features >= 1 ({self.in_features!r})")
        try:
            cand = self.candidate
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if self.pruned != cand.pruned:
            raise ConfigError(f"{where}: pruned={self.pruned!r} but code={self.code!r}, "
                              f"bits={self.bits!r} (pruning is code 'pruned', bits 0)")
        k, g = self.in_features, space.group
        if cand.act not in space.activations and cand.act != "fp":
            raise ConfigError(f"{where}: act={cand.act!r} is not among the plan space's "
                              f"activations {space.activations}")
        if cand.code in ("uniform", "bcq") and cand.act != "int8" and not space.per_row(k) \
                and k % g:
            raise ConfigError(f"{where}: the plan's group={g} does not divide in_features={k}")
        if cand.code == "bcq" and k % 8:
            raise ConfigError(f"{where}: BCQ needs in_features % 8 == 0, got {k}")


@dataclasses.dataclass(frozen=True)
class Link:
    """Linear ``sink`` (o, FFN-out) reads ``width`` input columns from each pruning unit in
    ``feeders`` (the name of one entry of each unit: a head's q rows, a neuron block's up rows,
    a whole up), which together supply all its columns; ``reads``: the linears only ``sink``
    reads, removed with it when it is pruned whole."""

    sink: str
    feeders: tuple[str, ...]
    width: int
    reads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "feeders", tuple(self.feeders))
        object.__setattr__(self, "reads", tuple(self.reads))
        if not self.feeders or isinstance(self.width, bool) or not isinstance(self.width, int) \
                or self.width < 1:
            raise ConfigError(f"Link({self.sink!r}): needs feeders and an int width >= 1, got "
                              f"{len(self.feeders)} feeder(s), width={self.width!r}")

    def to_dict(self) -> dict:
        return {"sink": self.sink, "feeders": list(self.feeders), "width": self.width,
                "reads": list(self.reads)}


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """Entries (one per subgroup, in graph order), the search space they were chosen in (its
    storage settings price them), the budget (bytes), ``info`` (how the search ran) and
    ``links`` (module docstring)."""

    entries: tuple[PlanEntry, ...]
    space: SearchSpace = dataclasses.field(default_factory=SearchSpace)
    budget_bytes: int | None = None
    info: dict = dataclasses.field(default_factory=dict)
    links: tuple[Link, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "links", tuple(self.links))
        if not self.entries:
            raise ConfigError("PrecisionPlan: no entries")
        spans: dict[str, list] = collections.defaultdict(list)
        tied: dict[str, set] = collections.defaultdict(set)
        for i, e in enumerate(self.entries):
            if not isinstance(e, PlanEntry):
                raise ConfigError(f"PrecisionPlan entry {i}: not a PlanEntry ({e!r})")
            e._check(i, self.space)
            spans[e.linear].append((e.rows, e.in_features, e.out_features, i))
            if e.tie is not None:
                tied[e.tie].add(e.pruned)
        for linear, rows in spans.items():
            if len({(k, n) for _, k, n, _ in rows}) > 1:
                raise ConfigError(f"PrecisionPlan: the entries of {linear} disagree on its "
                                  f"shape: {sorted({(n, k) for _, k, n, _ in rows})}")
            at = 0
            for (a, b), _, n, i in sorted(rows):
                if a != at:
                    what = "overlap" if a < at else f"leave rows {at}:{a} uncovered"
                    raise ConfigError(f"PrecisionPlan entry {i} ({linear}[{a}:{b}]): the "
                                      f"entries of {linear} {what}")
                at = b
            if at != n:
                raise ConfigError(f"PrecisionPlan: the entries of {linear} cover rows 0:{at} "
                                  f"of {n}")
        acts: dict[str, set] = collections.defaultdict(set)
        for e in self.entries:
            if not e.pruned:
                acts[e.linear].add(e.act)
        for linear, seen in acts.items():
            if len(seen) > 1:
                raise ConfigError(f"PrecisionPlan: the kept entries of {linear} disagree on "
                                  f"its input: {sorted(seen)} (one per linear; "
                                  f"PrecisionPlan.edit_activation sets it for all of them)")
        for tie, states in tied.items():
            if len(states) > 1:
                names = [e.name for e in self.entries if e.tie == tie]
                raise ConfigError(f"PrecisionPlan: tie {tie!r} ({', '.join(names)}) is pruned "
                                  f"in part: its entries are pruned together or not at all")
        names = {e.name for e in self.entries}
        for j, ln in enumerate(self.links):
            if not isinstance(ln, Link):
                raise ConfigError(f"PrecisionPlan link {j}: not a Link ({ln!r})")
            if ln.sink not in spans:
                raise ConfigError(f"PrecisionPlan link {j}: no entries of its sink {ln.sink!r}")
            k = spans[ln.sink][0][1]
            lost = [f for f in ln.feeders if f not in names] + [
                r for r in ln.reads if r not in spans]
            if lost or ln.width * len(ln.feeders) != k:
                raise ConfigError(f"PrecisionPlan link {j} ({ln.sink}): {len(ln.feeders)} "
                                  f"feeder(s) x {ln.width} columns must cover its {k} input "
                                  f"columns, and name entries of the plan (unknown: {lost})")

    # ---- sizes ------------------------------------------------------------------------------
    def _bytes(self) -> tuple[int, ...]:
        """Bytes per entry as ``apply_precision`` stores it (module docstring)."""
        removed: dict[str, int] = {}
        dead: set[str] = set()
        if self.links:
            by_name = {e.name: e for e in self.entries}
            whole = {e.linear: True for e in self.entries}
            for e in self.entries:
                whole[e.linear] = whole[e.linear] and e.pruned
            for ln in self.links:
                removed[ln.sink] = ln.width * sum(by_name[f].pruned for f in ln.feeders)
                if whole[ln.sink]:
                    dead |= set(ln.reads)
        return tuple(
            0 if e.linear in dead else narrowed_bytes(
                e.rows[1] - e.rows[0], e.in_features, removed.get(e.linear, 0), e.candidate,
                self.space)
            for e in self.entries)

    def entry_bytes(self, e: PlanEntry) -> int:
        """Bytes of entry ``e`` (one of this plan's) as stored (module docstring)."""
        return self._bytes()[self.entries.index(e)]

    @property
    def total_bytes(self) -> int:
        return sum(self._bytes())

    @property
    def elements(self) -> int:
        return sum(e.elements for e in self.entries)

    @property
    def activations(self) -> dict[str, str]:
        """Linear -> its input choice, for the linears whose input is not "fp"."""
        return {e.linear: e.act for e in self.entries if not e.pruned and e.act != "fp"}

    @property
    def average_bits(self) -> float:
        """Stored bits per weight element, scales and zero points included."""
        return 8 * self.total_bytes / self.elements

    # ---- editing ----------------------------------------------------------------------------
    def edit(self, key: int | str, *, code: str, bits: int) -> PrecisionPlan:
        """A new plan with entry ``key`` (index or ``PlanEntry.name``) set to ``code``/``bits``.
        Where that prunes or un-prunes a tied entry, its whole tie gets the same choice. The
        entry keeps its input choice (pruned: "fp"); one the new format cannot take (int8
        inputs without int8 weights) is a ConfigError: ``edit_activation`` first."""
        idx = key if isinstance(key, int) else next(
            (i for i, e in enumerate(self.entries) if e.name == key), None)
        if idx is None or not 0 <= idx < len(self.entries):
            raise ConfigError(f"PrecisionPlan.edit: no entry {key!r}")
        old = self.entries[idx]
        whole_tie = old.tie is not None and old.pruned != (code == "pruned")
        def act(e: PlanEntry) -> str:
            if code == "pruned":
                return "fp"
            return e.act if not e.pruned else self.activations.get(e.linear, "fp")

        entries = tuple(
            dataclasses.replace(e, code=code, bits=bits, pruned=code == "pruned",
                                sensitivity=None, act=act(e))
            if i == idx or (whole_tie and e.tie == old.tie) else e
            for i, e in enumerate(self.entries))
        return dataclasses.replace(self, entries=entries)

    def edit_activation(self, linear: str, act: str) -> PrecisionPlan:
        """A new plan whose kept entries of ``linear`` take input ``act`` (``space``'s
        ACTIVATIONS; "int8" needs int8 weights on every kept entry: a ConfigError names the
        first that has not)."""
        if not any(e.linear == linear for e in self.entries):
            raise ConfigError(f"PrecisionPlan.edit_activation: no linear {linear!r}")
        space = self.space
        if act not in space.activations:
            space = dataclasses.replace(space, activations=space.activations + (act,))
        entries = tuple(dataclasses.replace(e, act=act, sensitivity=None)
                        if e.linear == linear and not e.pruned else e for e in self.entries)
        return dataclasses.replace(self, entries=entries, space=space)

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        entries = [{**dataclasses.asdict(e), "rows": list(e.rows)} for e in self.entries]
        return {"format": "lowbit.precision_plan/1", "space": self.space.to_dict(),
                "budget_bytes": self.budget_bytes, "total_bytes": self.total_bytes,
                "average_bits": round(self.average_bits, 6), "info": self.info,
                "links": [ln.to_dict() for ln in self.links], "entries": entries}

    @classmethod
    def from_dict(cls, d: dict) -> PrecisionPlan:
        if not isinstance(d, dict) or not isinstance(d.get("entries"), list):
            raise ConfigError("PrecisionPlan.from_dict: expected an object with 'entries'")
        names = {f.name for f in dataclasses.fields(PlanEntry)}
        entries = []
        for i, e in enumerate(d["entries"]):
            missing = set(_FIELDS) - set(e) if isinstance(e, dict) else set(_FIELDS)
            if missing or set(e) - names:
                raise ConfigError(f"PrecisionPlan entry {i}: missing {sorted(missing)} or "
                                  f"unknown {sorted(set(e) - names) if isinstance(e, dict) else e}")
            rows = e["rows"]
            entries.append(PlanEntry(**{**e, "rows": tuple(rows) if isinstance(rows, list)
                                        else rows}))
        links = []
        for j, ln in enumerate(d.get("links", [])):
            if not isinstance(ln, dict) or set(ln) != set(_LINK_FIELDS):
                raise ConfigError(f"PrecisionPlan link {j}: expected the fields "
                                  f"{list(_LINK_FIELDS)}, got {ln!r}")
            links.append(Link(**ln))
        return cls(tuple(entries), SearchSpace.from_dict(d.get("space", {})),
                   d.get("budget_bytes"), d.get("info", {}), tuple(links))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON atomically (a temporary sibling, then ``os.replace``)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrecisionPlan:
        return cls.from_dict(read_json(path, "PrecisionPlan.load"))

    # ---- printing ---------------------------------------------------------------------------
    def summary(self) -> str:
        """One line per linear: shape, choices (count per format), bytes, bits per weight."""
        sym = self.space.symmetric
        by = collections.OrderedDict()
        size = dict(zip(self.entries, self._bytes()))
        for e in self.entries:
            by.setdefault(e.linear, []).append(e)
        budget = "" if self.budget_bytes is None else f" (budget {self.budget_bytes:,})"
        head = (f"PrecisionPlan: {len(by)} linears, {len(self.entries)} subgroups, "
                f"{self.total_bytes:,} bytes{budget}, {self.average_bits:.3f} bits/weight, "
                f"{sum(e.pruned for e in self.entries)} pruned")
        columns = (f"  {'linear':<44} {'role':<8} {'shape':>10}  {'choices':<30} {'bytes':>10} "
                   f"{'bits':>6}")
        out = [head, columns]
        for linear, es in by.items():
            counts = collections.Counter(e.candidate.label(sym) for e in es)
            choices = ", ".join(f"{c} x{n}" if n > 1 else c for c, n in counts.most_common())
            nbytes, elems = sum(size[e] for e in es), sum(e.elements for e in es)
            shape = f"{es[0].out_features}x{es[0].in_features}"
            out.append(f"  {linear[-44:]:<44} {es[0].role:<8} {shape:>10}  {choices:<30} "
                       f"{nbytes:>10,} {8 * nbytes / elems:>6.2f}")
        totals = collections.Counter()
        for e in self.entries:
            totals[e.candidate.label(sym)] += e.elements
        share = ", ".join(f"{c} {100 * n / self.elements:.1f}%" for c, n in totals.most_common())
        out.append(f"  weights by format: {share}")
        return "\n".join(out)


def narrowings(links: Sequence[Link], subgroups: Sequence[Subgroup],
               candidates: Sequence[Candidate], space: SearchSpace,
               latency: np.ndarray | None = None) -> list[Narrowing]:
    """The integer program's ``Narrowing`` per link over ``subgroups`` (indices by name):
    ``nbytes[j, c, n]`` = ``cost.narrowed_bytes`` of sink row block j as candidate c with
    n x ``width`` columns removed; with ``latency`` [S, C] (full width), its latency
    ``latency[s, c] * K' / K`` (a GEMM's time taken as linear in K: not measured per K')."""
    at = {sg.name: i for i, sg in enumerate(subgroups)}
    out = []
    for ln in links:
        sinks = [i for i, sg in enumerate(subgroups) if sg.linear == ln.sink]
        missing = [f for f in ln.feeders if f not in at]
        if not sinks or missing:
            raise ConfigError(f"narrowings: link of {ln.sink!r} names subgroups the search "
                              f"does not have ({missing[:3] or ln.sink})")
        nb = np.array([[[narrowed_bytes(subgroups[s].rows[1] - subgroups[s].rows[0],
                                        subgroups[s].in_features, n * ln.width, c, space)
                         for n in range(len(ln.feeders) + 1)] for c in candidates]
                       for s in sinks], dtype=np.int64)
        reads = tuple(i for i, sg in enumerate(subgroups) if sg.linear in ln.reads)
        lat = None
        if latency is not None:
            nf = len(ln.feeders)
            kept = np.array([(nf - n) / nf for n in range(nf + 1)])
            lat = np.asarray(latency, dtype=float)[sinks][:, :, None] * kept[None, None, :]
        out.append(Narrowing(tuple(at[f] for f in ln.feeders), tuple(sinks), nb, reads, lat))
    return out
