"""Tuning database and the reference check, without MetaSchedule's search (too slow for unit
tests: its first task alone imports TVM's whole intrinsic package, 20-50 s here).

A record is made by hand from the default schedule's trace and committed to the database, so
these tests check what ``compile(..., tune=Tune(...))`` relies on: a workload with a record is
not tuned again, its trace replays (naming our VNNI intrinsic), the replayed kernel passes the
numpy reference check, a failed check is remembered and the kernel keeps its default schedule,
and a wrong kernel (the VNNI compute over a mis-laid weight) is caught by the check.

``LOWBIT_TVM_TUNE_TEST=1`` adds a real 2-trial MetaSchedule run (about 1-2 min here).
"""

import os

import pytest
import tvm
from tvm import te

from lowbit.backends.tvm import check as check_mod
from lowbit.backends.tvm import kernels, tune
from lowbit.backends.tvm.check import CheckResult, check_schedule
from lowbit.backends.tvm.target import host_target
from lowbit.errors import ConfigError

TARGET = host_target()
pytestmark = pytest.mark.skipif(not kernels.has_vnni(TARGET), reason="host has no AVX-512 VNNI")
M, N, K = 16, 48, 64
NAME = f"lowbit_linear_u8s8_{M}_{N}_{K}"


def _module():
    return tvm.IRModule({NAME: kernels.linear_u8s8(M, N, K)})


def _commit_default_record(folder):
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    func = kernels.linear_u8s8(M, N, K)
    db = tune.TuningDB(folder)
    workload = db.ms.commit_workload(tune._workload(func))
    sch = kernels.default_schedule(func.with_attr("global_symbol", "main"), TARGET)
    db.ms.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, [1e-4], TARGET, ArgInfo.from_prim_func(func)))


def test_tune_options_validated():
    with pytest.raises(ConfigError, match="trials"):
        tune.Tune(trials=-1)
    with pytest.raises(ConfigError, match="kernels"):
        tune.Tune(kernels="some")


def _tuned_is(faster: bool):
    """Stand-in for timing the tuned schedule against the default one."""
    return lambda funcs, target: [1e-4, 2e-4] if faster else [2e-4, 1e-4]


@pytest.mark.parametrize("faster", [True, False])
def test_recorded_kernel_is_reused_checked_and_timed(tmp_path, monkeypatch, capsys, faster):
    _commit_default_record(tmp_path)
    monkeypatch.setattr(tune, "time_kernels", _tuned_is(faster))
    chosen = tune.tune_module(_module(), TARGET, tune.Tune(trials=8, db=tmp_path))
    assert "0 to tune" in capsys.readouterr().err
    assert list(chosen) == ([NAME] if faster else [])       # slower than default: not used
    (entry,) = tune.TuningDB(tmp_path).verified.values()
    assert entry["ok"] and entry["use"] == faster and "numpy" in entry["detail"]
    assert entry["tuned_ms"] == pytest.approx(0.1 if faster else 0.2)


def test_failed_check_is_remembered(tmp_path, monkeypatch, capsys):
    """A record failing the reference check is never used, and never checked again."""
    _commit_default_record(tmp_path)
    monkeypatch.setattr(tune, "check_schedule", lambda *a, **k: CheckResult(False, 1.0, "bad"))
    assert tune.tune_module(_module(), TARGET, tune.Tune(trials=8, db=tmp_path)) == {}
    assert "REJECTED" in capsys.readouterr().err
    monkeypatch.setattr(tune, "check_schedule", lambda *a, **k: pytest.fail("checked twice"))
    assert tune.tune_module(_module(), TARGET, tune.Tune(trials=8, db=tmp_path)) == {}


def test_interrupted_run_leaves_a_readable_database(tmp_path, monkeypatch, capsys):
    """A run killed while appending a record leaves a partial last line in MetaSchedule's
    table: the database drops that line (saying so), keeps the other records, and still
    serves them; verified.json is replaced atomically (no temporary file left behind)."""
    _commit_default_record(tmp_path)
    table = tmp_path / "ms" / "database_tuning_record.json"
    good = table.read_text()
    table.write_text(good + good.splitlines()[0][:40])          # the half-written record
    monkeypatch.setattr(tune, "time_kernels", _tuned_is(True))
    chosen = tune.tune_module(_module(), TARGET, tune.Tune(trials=0, db=tmp_path))
    err = capsys.readouterr().err
    assert "dropped 1 unreadable line" in err and list(chosen) == [NAME]
    assert table.read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms", "verified.json"]
    (tmp_path / "verified.json").write_text("{half")            # hand-edited into garbage
    assert list(tune.tune_module(_module(), TARGET, tune.Tune(trials=0, db=tmp_path))) == [NAME]
    assert "not valid JSON" in capsys.readouterr().err


def test_database_path_that_is_a_file(tmp_path):
    f = tmp_path / "db"
    f.write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        tune.TuningDB(f)


def test_check_catches_a_wrong_weight_layout():
    """The VNNI compute reading the packed weight with k and n swapped inside the 16x4 block:
    builds and runs, wrong numbers."""
    n_pad = N
    x = te.placeholder((M, K), "uint8", name="x_u8")
    w = te.placeholder((n_pad // 16, K // 4, 16, 4), "int8", name="w_i8")
    corr = te.placeholder((N,), "int32", name="corr_i32")
    scale = te.placeholder((N,), "float32", name="scale_f32")
    bias = te.placeholder((N,), "float32", name="bias_f32")
    r = te.reduce_axis((0, K), name="k")
    acc = te.compute((M, n_pad), lambda i, j: te.sum(
        x[i, r].astype("int32") * w[j // 16, r // 4, (r % 4) * 4 + j % 4, (j // 4) % 4]
        .astype("int32"), axis=r), name="acc_i32")
    y = te.compute((M, N), lambda i, j: (acc[i, j] - corr[j]).astype("float32") * scale[j]
                   + bias[j], name="y_f32")
    wrong = te.create_prim_func([x, w, corr, scale, bias, y])
    good = kernels.linear_u8s8(M, N, K)
    assert check_schedule(good, kernels.default_schedule(good, TARGET).mod["main"], TARGET).ok
    res = check_schedule(good, wrong, TARGET)
    assert not res.ok and res.max_err > 0


def test_random_args_cover_dtypes():
    args = check_mod.random_args(kernels.linear_u8s8(M, N, K))
    assert [a.dtype.name for a in args] == ["uint8", "int8", "int32", "float32", "float32",
                                            "float32"]
    assert args[0].max() > 200 and args[1].min() < -100          # full-range integers


@pytest.mark.skipif(os.environ.get("LOWBIT_TVM_TUNE_TEST") != "1",
                    reason="real MetaSchedule run: set LOWBIT_TVM_TUNE_TEST=1")
def test_metaschedule_two_trials_then_nothing(tmp_path, capsys):
    chosen = tune.tune_module(_module(), TARGET, tune.Tune(trials=2, db=tmp_path))
    err = capsys.readouterr().err
    assert "1 to tune" in err
    print(err)
    entries = list(tune.TuningDB(tmp_path).verified.values())
    if entries:                                  # 2 random candidates may all fail to build
        (entry,) = entries
        assert entry["ok"]
        assert list(chosen) == ([NAME] if entry["use"] else [])
    tune.tune_module(_module(), TARGET, tune.Tune(trials=2, db=tmp_path))
    err = capsys.readouterr().err
    assert "0 to tune" in err or not entries
