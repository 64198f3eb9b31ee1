"""lowbit.search.plan: JSON round trip (atomic), validation naming the entry, edits, sizes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lowbit.errors import ConfigError
from lowbit.search import PlanEntry, PrecisionPlan, SearchSpace, candidate_bytes
from lowbit.search.space import Candidate

Q = "block.0.q"


def _base_entries():
    return (PlanEntry(Q, "attn.q", (0, 16), 128, 32, "uniform", 4, tie="block0.kv0",
                      sensitivity=0.5),
            PlanEntry(Q, "attn.q", (16, 32), 128, 32, "bcq", 3, tie="block0.kv1"),
            PlanEntry("block.0.k", "attn.k", (0, 16), 128, 32, "uniform", 2, tie="block0.kv0"),
            PlanEntry("block.0.k", "attn.k", (16, 32), 128, 32, "fp", 32, tie="block0.kv1"),
            PlanEntry("block.0.o", "attn.o", (0, 32), 32, 32, "uniform", 8))


@pytest.fixture()
def plan():
    return PrecisionPlan(_base_entries(), SearchSpace(group=64), 10_000, {"solve_seconds": 0.01})


def test_sizes(plan):
    sp = plan.space
    want = sum(candidate_bytes(e.rows[1] - e.rows[0], e.in_features, Candidate(e.code, e.bits),
                               sp)["total"] for e in plan.entries)
    assert plan.total_bytes == want
    assert plan.elements == 4 * 16 * 128 + 32 * 32
    assert plan.average_bits == pytest.approx(8 * want / plan.elements)


def test_json_round_trip_is_atomic(plan, tmp_path):
    path = tmp_path / "sub" / "plan.json"
    plan.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.json"]   # no temp left
    back = PrecisionPlan.load(path)
    assert back == plan
    assert back.to_dict() == plan.to_dict()
    d = json.loads(path.read_text())
    assert d["total_bytes"] == plan.total_bytes and d["entries"][0]["rows"] == [0, 16]


def test_edit_a_tied_entry_prunes_the_whole_tie(plan):
    pruned = plan.edit(f"{Q}[0:16]", code="pruned", bits=0)
    tie = [e for e in pruned.entries if e.tie == "block0.kv0"]
    assert all(e.pruned and e.bits == 0 for e in tie) and len(tie) == 2
    assert pruned.total_bytes < plan.total_bytes
    assert pruned.entries[1] == plan.entries[1]       # other tie untouched
    back = pruned.edit(2, code="uniform", bits=8)      # un-pruning re-opens the tie
    assert [e.bits for e in back.entries if e.tie == "block0.kv0"] == [8, 8]
    same_state = plan.edit(0, code="bcq", bits=2)      # no pruning change: one entry only
    assert same_state.entries[2] == plan.entries[2] and same_state.entries[0].sensitivity is None
    with pytest.raises(ConfigError, match="no entry"):
        plan.edit("nope", code="fp", bits=32)


def _edited(plan, i, **change) -> dict:
    d = plan.to_dict()
    d["entries"][i].update(change)
    return d


@pytest.mark.parametrize("i,change,match", [
    (0, {"bits": 9}, r"entry 0 \(block.0.q\[0:16\]\).*'uniform' takes bits"),
    (1, {"code": "bcq", "bits": 8}, r"entry 1 .*'bcq' takes bits"),
    (0, {"pruned": True}, r"entry 0 .*pruned=True but code='uniform'"),
    (0, {"rows": [0, 20]}, r"entry 1 \(block.0.q\[16:32\]\).*overlap"),
    (1, {"rows": [20, 32]}, r"entry 1 .*leave rows 16:20 uncovered"),
    (4, {"rows": [0, 40]}, r"entry 4 .*out_features=32"),
    (2, {"code": "pruned", "bits": 0, "pruned": True}, r"tie 'block0.kv0'.*pruned in part"),
    (4, {"code": "bcq", "bits": 2, "in_features": 36}, r"entry 4 .*group|in_features % 8"),
    (0, {"color": "red"}, r"entry 0: .*unknown \['color'\]"),
])
def test_edited_json_is_revalidated_naming_the_entry(plan, i, change, match):
    with pytest.raises(ConfigError, match=match):
        PrecisionPlan.from_dict(_edited(plan, i, **change))


def test_group_must_divide_and_unreadable_files(plan, tmp_path):
    with pytest.raises(ConfigError, match="group=64 does not divide in_features=96"):
        PrecisionPlan(tuple(dataclasses.replace(e, in_features=96) for e in plan.entries),
                      plan.space)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read a plan"):
        PrecisionPlan.load(bad)
    with pytest.raises(ConfigError, match="no entries"):
        PrecisionPlan(())


def test_summary_lists_every_linear_and_the_totals(plan):
    text = plan.summary()
    assert f"{plan.total_bytes:,} bytes" in text and "(budget 10,000)" in text
    assert f"{plan.average_bits:.3f} bits/weight" in text
    for name in (Q, "block.0.k", "block.0.o"):
        assert name in text
    assert "int4, bcq3" in text or "bcq3, int4" in text
    assert "weights by format:" in text
