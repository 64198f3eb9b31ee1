"""Tuning database and the reference check, without MetaSchedule's search (too slow for unit
tests: its first task alone imports TVM's whole intrinsic package, 20-50 s here).

A record is made by hand from the default schedule's trace and committed to the database, so
these tests check what ``compile(..., tune=Tune(...))`` relies on: a workload with a record is
not tuned again, its trace replays (naming our intrinsic, isa/), the replayed kernel passes the
numpy reference check, a failed check is remembered and the kernel keeps its default schedule,
and a wrong kernel (the int8 compute over a mis-laid weight) is caught by the check. On hosts
whose instruction set has the pair form (AVX2, AVX-512BW) the int8 kernel's record is a tile
record (tile_search.py) instead of a MetaSchedule trace; the MetaSchedule table tests use an
fp32 matmul there. Records are kept per target: one target's never serves another.

``LOWBIT_TVM_TUNE_TEST=1`` adds a real 2-trial MetaSchedule run (about 1-2 min here), which
also checks that its output goes to ``<db>/tune.log``, not to the terminal.
"""

import os

import pytest
import tvm
from tvm import te

from lowbit.backends.tvm import check as check_mod
from lowbit.backends.tvm import kernels, tile_search, tune
from lowbit.backends.tvm.check import CheckResult, check_schedule
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.target import host_target, resolve_target
from lowbit.errors import ConfigError

TARGET = host_target()
pytestmark = pytest.mark.skipif(
    isa_of(TARGET) is None, reason="host without AVX2: no int8 kernels")
M, N, K = 16, 48, 64
NAME = f"lowbit_linear_u8s8_{M}_{N}_{K}"


def _module():
    return tvm.IRModule({NAME: kernels.linear_u8s8(M, N, K)})


def _commit_default_record(folder, func=None, target=None):
    """A record of ``func``'s default schedule on ``target`` (default: the int8 kernel, the
    host): a tile record where the target tunes int8 kernels by tile, else a MetaSchedule
    trace."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from lowbit.backends.tvm.schedules.cpu import Matmul

    func = func if func is not None else kernels.linear_u8s8(M, N, K)
    target = target or TARGET
    db = tune.TuningDB(folder)
    if tile_search.applies(func, target):
        db.tiles_for(target).put(func, *tile_search.candidates(func, isa_of(target))[0], 0.1)
        return
    workload = db.ms_for(target).commit_workload(tune._workload(func))
    main = func.with_attr("global_symbol", "main")
    sch = (kernels.default_schedule(main, target) if kernels.kernel_kind(func)
           else Matmul().apply(main, target, False))
    db.ms_for(target).commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, [1e-4], target, ArgInfo.from_prim_func(func)))


def _matmul_f32():
    a = te.placeholder((M, K), "float32", name="a")
    b = te.placeholder((K, N), "float32", name="b")
    r = te.reduce_axis((0, K), name="k")
    return te.create_prim_func([a, b, te.compute((M, N), lambda i, j: te.sum(
        a[i, r] * b[r, j], axis=r), name="matmul")])


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
    func = _matmul_f32()
    mod = tvm.IRModule({"matmul": func})
    _commit_default_record(tmp_path, func)
    table = tmp_path / "ms" / tune.target_key(TARGET) / "database_tuning_record.json"
    good = table.read_text()
    table.write_text(good + good.splitlines()[0][:40])          # the half-written record
    monkeypatch.setattr(tune, "time_kernels", _tuned_is(True))
    chosen = tune.tune_module(mod, TARGET, tune.Tune(trials=0, db=tmp_path))
    err = capsys.readouterr().err
    assert "dropped 1 unreadable line" in err and list(chosen) == ["matmul"]
    assert table.read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms", "verified.json"]
    (tmp_path / "verified.json").write_text("{half")            # hand-edited into garbage
    assert list(tune.tune_module(mod, TARGET, tune.Tune(trials=0, db=tmp_path))) == ["matmul"]
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("other", ["x86-64-v3", "cascadelake", "alderlake", "skylake-avx512"])
def test_records_are_kept_per_target(tmp_path, other):
    """A record made for the host never answers for another instruction set's target (nor the
    reverse), for an int8 kernel or an fp32 matmul: tuned traces name target-specific
    intrinsics and timings (nothing here runs a kernel)."""
    other_t = resolve_target(other)
    if tune.target_key(other_t) == tune.target_key(TARGET):
        other_t = resolve_target({"kind": "llvm", "mcpu": other, "num-cores": 1})
    for func in (kernels.linear_u8s8(M, N, K), _matmul_f32()):
        _commit_default_record(tmp_path, func)
        db = tune.TuningDB(tmp_path)
        assert db.has_record(func, TARGET)
        assert not db.has_record(func, other_t) and db.schedule(func, other_t) is None


def test_tile_search_on_avx2(tmp_path, capsys):
    """The pair-form int8 kernels (AVX2 here, which every host of this suite runs) are tuned
    by tile: every candidate timed, the best recorded, checked against numpy, reused."""
    avx2 = resolve_target("x86-64-v3")
    mod = tvm.IRModule({NAME: kernels.linear_u8s8(M, N, K)})
    chosen = tune.tune_module(mod, avx2, tune.Tune(trials=4, db=tmp_path))
    err = capsys.readouterr().err
    assert "best tile" in err and "vs numpy reference" in err
    assert tune.TuningDB(tmp_path).tiles_for(avx2).get(mod[NAME]) is not None
    assert set(chosen) <= {NAME}
    tune.tune_module(mod, avx2, tune.Tune(trials=4, db=tmp_path))
    assert "0 to tune" in capsys.readouterr().err


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
def test_metaschedule_two_trials_then_nothing(tmp_path, capfd):
    """Also: MetaSchedule's tables, XGBoost's lines and the workers' C++ warnings go to
    <db>/tune.log; the terminal (fd 1 and 2) gets lowbit's lines only, one per task."""
    chosen = tune.tune_module(_module(), TARGET, tune.Tune(trials=2, db=tmp_path))
    out, err = capfd.readouterr()
    assert "1 to tune" in err and f"tuning 1/1 {NAME}: 2 of 2 trials" in err
    assert out == "" and all(line.startswith("[lowbit]") for line in err.splitlines()), err
    log = (tmp_path / "tune.log").read_text()
    assert "===== " in log and "Trials" in log and "XGB" in log
    entries = list(tune.TuningDB(tmp_path).verified.values())
    if entries:                                  # 2 random candidates may all fail to build
        (entry,) = entries
        assert entry["ok"]
        assert list(chosen) == ([NAME] if entry["use"] else [])
    tune.tune_module(_module(), TARGET, tune.Tune(trials=2, db=tmp_path))
    err = capfd.readouterr().err
    assert "0 to tune" in err or not entries
