"""lowbit.search.latency and lowbit.mixed_precision_latency: measured kernel times per
(shape, candidate) and what the search makes of them.

Structure: the timed module is the linear in the candidate's kernel (``meta["lowering"]``) and
computes the float linear (fp32 within FP32_TOL; fp16 inputs: of the half-rounded input);
records round-trip through JSON and the tuning database, are reused without a compile, stay
apart per target (and storage, and tuning); a missing key and bad inputs are ConfigErrors.
Numbers: subgroup shares add up to the linear's time. Speed is never asserted.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lowbit
from lowbit import mixed_precision_latency as mpl
from lowbit.errors import ConfigError
from lowbit.search import (
    Candidate,
    LatencyTable,
    SearchSpace,
    Subgroup,
    latency_model,
    subgroup_latency,
)

N, K, M = 64, 64, 8
SPACE = SearchSpace(bits=(0, 3, 4, 8), group=None, bcq_iters=2, activations=("fp", "int8"))
INT4, BCQ3, INT8A8 = Candidate("uniform", 4), Candidate("bcq", 3), Candidate("uniform", 8, "int8")
PRUNED, FP32 = Candidate("pruned", 0), Candidate("fp", 32)
FP32_TOL = 1e-5          # fp32 GEMM vs torch: reassociated sums over K = 64


def fake_table(times: dict, key: str = "llvm-test-noisa-0") -> LatencyTable:
    """A table of ``times``: (n, k, m, Candidate) -> seconds."""
    return LatencyTable("test", key, {(n, k, m, c.code, c.bits, c.act): {"seconds": s}
                                      for (n, k, m, c), s in times.items()})


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One real measurement (64 x 64, m = 8; int4, BCQ 3, int8 inputs, pruned) into a db."""
    db = tmp_path_factory.mktemp("tuning")
    table = mpl.measure_latency([(N, K)], M, [PRUNED, INT4, BCQ3, INT8A8], SPACE, db=db,
                                repeat=2, progress=False)
    return table, db


# ---- measuring --------------------------------------------------------------------------------
def test_measured_modules_run_the_candidates_kernel(measured):
    table, _ = measured
    assert table.record(N, K, M, INT4)["lowering"] == ["linear_w4a16"]
    assert table.record(N, K, M, BCQ3)["lowering"] == ["bcq_linear"]
    assert table.record(N, K, M, INT8A8)["lowering"] == ["linear_u8s8"]
    assert table.get(N, K, M, PRUNED) == 0.0 and not table.has(N, K, M, FP32)
    for c in (INT4, BCQ3, INT8A8):
        rec = table.record(N, K, M, c)
        assert rec["seconds"] == max(rec["raw_seconds"] - rec["overhead_seconds"], 0.0)
        assert rec["raw_seconds"] > 0 and rec["overhead_seconds"] > 0


def test_timed_module_is_the_linear():
    model, x = mpl._float_linear(N, K, M)
    gm = lowbit.capture(model, (x,))
    mod = mpl.candidate_module(gm, FP32, SPACE, x, "cpu", None)
    want = model(x).detach().numpy()
    assert np.abs(mod(x.numpy()) - want).max() <= FP32_TOL * np.abs(want).max()
    w8 = mpl.candidate_module(gm, Candidate("uniform", 8), SPACE, x, "cpu", None)
    assert "linear_u8s8" not in {k for _, k in w8.meta["lowering"]}   # "fp" input: no W8A8
    half = mpl.candidate_module(gm, Candidate("fp", 32, "fp16"), SearchSpace(
        activations=("fp", "fp16")), x, "cpu", None)                    # the input rounded
    want = model(x.half().float()).detach().numpy()
    assert np.abs(half(x.numpy()) - want).max() <= FP32_TOL * np.abs(want).max()


def test_second_measure_reuses_records(measured, monkeypatch):
    table, db = measured
    builds = []
    monkeypatch.setattr(mpl, "_build", lambda *a: builds.append(a))
    again = mpl.measure_latency([(N, K)], M, [INT4, BCQ3, INT8A8], SPACE, db=db, repeat=2,
                                progress=False)
    assert builds == [] and again.records == {k: v for k, v in table.records.items()}


def fake_measure(asked: list):
    """A stand-in for ``_measure_shape`` that compiles nothing and notes what it was asked."""
    def fake(n, k, m, cands, space, target, tune, repeat, overhead):
        asked.append((str(target), [c.label() for c in cands]))
        return {(n, k, m, c.code, c.bits, c.act): {
            "seconds": 1e-6, "storage": mpl._storage(space, k, c), "tuned": tune is not None}
            for c in cands}
    return fake


def test_other_storage_or_target_measures_again(measured, monkeypatch, tmp_path):
    db = tmp_path / "tuning"
    shutil.copytree(measured[1], db)
    asked = []
    monkeypatch.setattr(mpl, "_measure_shape", fake_measure(asked))
    mpl.measure_latency([(N, K)], M, [INT4], SearchSpace(bits=(4,), group=32), db=db,
                        progress=False)                         # another group: measured again
    other = {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 1}
    t2 = mpl.measure_latency([(N, K)], M, [INT4], SPACE, target=other, db=db, progress=False)
    assert [a[1] for a in asked] == [["int4"], ["int4"]] and "x86-64-v3" in asked[1][0]
    files = sorted(p.name for p in (db / "latency").iterdir())
    assert len(files) == 2 and f"{t2.target_key}.json" in files
    host = LatencyTable.load(LatencyTable.path_in(db, next(f for f in files if "v3" not in f)
                                                  .removesuffix(".json")))
    assert host.has(N, K, M, BCQ3) and host.record(N, K, M, INT4)["storage"]["group"] == 32


def test_tuned_records_serve_untuned_asks_not_the_reverse(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(mpl, "_measure_shape", fake_measure(asked))
    tune = lowbit.Tune(trials=0, db=tmp_path / "tuning")

    def measure(**kw):
        mpl.measure_latency([(N, K)], M, [INT4], SPACE, progress=False, **kw)
        return len(asked)

    assert measure(db=tmp_path / "tuning") == 1
    assert measure(tune=tune) == 2                      # db = tune.db; untuned: again
    assert measure(tune=tune) == 2 and measure(db=tmp_path / "tuning") == 2
    assert (tmp_path / "tuning" / "latency").is_dir()


@pytest.mark.parametrize("bad, what", [
    ({"m": 0}, r"m \(rows"),
    ({"candidates": [Candidate("uniform", 2)]}, "not in the space"),
    ({"shapes": [(64, 0)]}, "shape"),
    ({"shapes": [(64, 60)]}, "BCQ packs"),
    ({"repeat": 0}, "repeat"),
])
def test_bad_inputs_are_config_errors(bad, what, monkeypatch):
    monkeypatch.setattr(mpl, "_build", lambda *a: pytest.fail("compiled"))
    args = {"shapes": [(N, K)], "m": M, "candidates": [INT4], "space": SPACE} | bad
    with pytest.raises(ConfigError, match=what):
        mpl.measure_latency(args["shapes"], args["m"], args["candidates"], args["space"],
                            progress=False, **{k: v for k, v in bad.items() if k == "repeat"})


# ---- the table ----------------------------------------------------------------------------------
def test_table_round_trips_json_and_db(tmp_path):
    t = fake_table({(N, K, M, INT4): 2e-6, (N, K, M, INT8A8): 1e-6})
    t.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == t
    assert json.loads((tmp_path / "t.json").read_text())["format"] == "lowbit.latency/1"
    t.save_to_db(tmp_path / "db")
    fake_table({(N, K, M, BCQ3): 3e-6}).save_to_db(tmp_path / "db")       # merged, not replaced
    back = LatencyTable.from_db(tmp_path / "db", t.target_key)
    assert len(back) == 3 and back.get(N, K, M, INT4) == 2e-6
    assert len(LatencyTable.from_db(tmp_path / "db", "llvm-other-noisa-1")) == 0


def test_missing_key_names_it():
    t = fake_table({(N, K, M, INT4): 2e-6})
    with pytest.raises(ConfigError, match=r"n=64 k=64 m=16 int4"):
        t.get(N, K, 16, INT4)
    with pytest.raises(ConfigError, match="seconds >= 0"):
        fake_table({(N, K, M, INT4): -1.0})


def test_subgroup_shares_add_up_to_the_linear():
    t = fake_table({(N, K, M, INT4): 6e-6, (N, K, M, BCQ3): 3e-6})
    sgs = [Subgroup("q", "attn.q", "q.weight", (a, a + 16), K, N) for a in range(0, N, 16)]
    lat = subgroup_latency(t, sgs, [PRUNED, INT4, BCQ3], M)
    assert lat.shape == (4, 3) and (lat[:, 0] == 0).all()
    assert lat[:, 1].sum() == pytest.approx(6e-6) and lat[:, 2].sum() == pytest.approx(3e-6)
    with pytest.raises(ConfigError, match="m "):
        subgroup_latency(t, sgs, [INT4], 0)


def test_latency_model_fits_a_call_cost_from_two_row_counts():
    """t(64 rows) = 8 us, t(16 rows) = 3.5 us: 93.75 ns a row and 2 us a call; each 16-row
    subgroup costs 1.5 us, the linear 2 us once per format it uses."""
    t = fake_table({(N, K, M, INT4): 8e-6, (16, K, M, INT4): 3.5e-6,
                    (N, K, M, BCQ3): 4e-6, (16, K, M, BCQ3): 1.0e-6})
    sgs = [Subgroup("q", "attn.q", "q.weight", (a, a + 16), K, N) for a in range(0, N, 16)]
    lat, fixed = latency_model(t, sgs, [PRUNED, INT4, BCQ3], M)
    (idx, a), = fixed
    assert idx == (0, 1, 2, 3) and a[0] == 0.0
    assert lat[:, 1] == pytest.approx([1.5e-6] * 4) and a[1] == pytest.approx(2e-6)
    assert lat[:, 1].sum() + a[1] == pytest.approx(8e-6)          # one format: t(N) again
    assert lat[:, 2].sum() + a[2] == pytest.approx(4e-6)
    # without the subgroup's rows measured: the plain shares, no call cost
    lat2, fixed2 = latency_model(fake_table({(N, K, M, INT4): 8e-6, (N, K, M, BCQ3): 4e-6}),
                                 sgs, [PRUNED, INT4, BCQ3], M)
    assert fixed2 == [] and lat2[:, 1] == pytest.approx([2e-6] * 4)
