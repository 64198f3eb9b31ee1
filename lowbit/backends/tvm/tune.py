"""MetaSchedule tuning with a persistent database: ``Tune(trials=, db=)``.

The database folder holds MetaSchedule's JSON tables (workload = the PrimFunc's structure,
record = schedule trace + target + measured run time) and ``verified.json`` (per workload and
target: outcome of the reference check, and the tuned and default schedules timed side by
side). A kernel is tuned only when the database has no record for it on this target, so
compiling the same model twice tunes nothing the second time. Each best record is checked
against its reference (check.py) once; one that fails is never used. A correct one is used only
if it beats the default schedule (schedules/cpu.py) when timed next to it: on this shared 2-core
machine, search timings taken under a neighbour's load picked schedules slower than the
defaults.

Tasks are the kernels worth tuning (``kernels="gemm"``: the lowbit integer kernels and fp32
matmuls; ``"all"``: every kernel). ``trials`` is the total number of measured candidates,
split over the kernels being tuned so that the shares add up to it (``split_trials``: 64 over
6 kernels is 11, 11, 11, 11, 10, 10; ``trials // 6`` each ran 60 of 64). A candidate that fails
to build or run counts as a trial, as in MetaSchedule. The search space is MetaSchedule's x86
space with the target's dot-product intrinsic (kernels/isa/) under our own name
(``search_space``). Integer
kernels of pair-form instruction sets (AVX2, AVX-512BW: ``vpmaddwd``, whose partial sums
MetaSchedule cannot tensorize) are tuned by timing their hand schedule's register tiles
instead (tile_search.py).

Records are kept per target (``ms/<target key>/``, ``tiles/<target key>.json``): a
workload tuned for AVX2 is never replayed on AVX-512 or the reverse, even where the kernel is
the same (fp32 matmuls, or a VNNI kernel on AVX-VNNI and AVX-512 VNNI).

What MetaSchedule and XGBoost print goes to ``<db>/tune.log`` (tune_log.py); the terminal gets a
bar over the tasks and one line per task: trials measured of those asked (MetaSchedule stops a
task early when its search finds no new candidate; the line says so), how many failed to build
or run, the best time, the reference check and the comparison with the default schedule, and
the time the task took.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import types
from pathlib import Path

import tvm
import tvm_ffi

from lowbit.backends.tvm import tile_search
from lowbit.backends.tvm.check import check_schedule, time_kernels
from lowbit.backends.tvm.kernels import KERNEL_ATTR
from lowbit.backends.tvm.kernels.isa import ISAS, isa_of
from lowbit.backends.tvm.schedules.base import prim_funcs
from lowbit.backends.tvm.schedules.cpu import default_schedule_of
from lowbit.backends.tvm.tune_log import TUNE_LOG, into_log, log_sizes, shortfall_reason
from lowbit.errors import ConfigError
from lowbit.progress import bar as progress_bar
from lowbit.progress import say

__all__ = ["Tune", "TuningDB", "split_trials", "tune_module"]

KERNEL_SETS = ("gemm", "all")
BUILD_TIMEOUT_S = 60.0  # LLVM on a loaded 2-core machine; a kernel builds in 1-5 s when idle
RUN_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Tune:
    """Tuning options.

    Args:
        trials: total measured candidates over all kernels tuned in this compile; 0 tunes
            nothing and only applies what the database already holds (deployment builds).
        db: database folder (created); reused across compiles and models.
        kernels: "gemm" (integer kernels and fp32 matmuls) or "all".
        verify: check each tuned schedule against its reference before using it.
        num_cores: cores MetaSchedule measures with (default: the target's num-cores).
    """

    trials: int = 64
    db: str | os.PathLike = "lowbit-tuning"
    kernels: str = "gemm"
    verify: bool = True
    num_cores: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.trials, int) or isinstance(self.trials, bool) or self.trials < 0:
            raise ConfigError(f"Tune.trials must be an int >= 0, got {self.trials!r}")
        if self.kernels not in KERNEL_SETS:
            raise ConfigError(f"Tune.kernels must be one of {KERNEL_SETS}, got {self.kernels!r}")
        if not isinstance(self.db, (str, os.PathLike)) or not str(self.db):
            raise ConfigError(f"Tune.db must be a folder path, got {self.db!r}")


def _workload(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _wanted(name: str, func: tvm.tirx.PrimFunc, kernels: str) -> bool:
    return kernels == "all" or KERNEL_ATTR in func.attrs or "matmul" in name


def target_key(target) -> str:
    """A folder-safe name for ``target``'s records: readable part plus a hash of the whole."""
    import hashlib

    isa = isa_of(target)
    mcpu = str(target.attrs.get("mcpu", "generic")) if hasattr(target, "attrs") else "generic"
    digest = hashlib.sha1(str(target).encode()).hexdigest()[:10]
    return f"{target.kind.name}-{mcpu}-{isa.name if isa else 'noisa'}-{digest}"


class TuningDB:
    """The database folder: per-target MetaSchedule JSON tables and tile-search records, plus
    reference-check outcomes."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"tuning database {self.folder} exists and is not a folder")
        (self.folder / "ms").mkdir(parents=True, exist_ok=True)
        for isa in ISAS:  # records name the intrinsics: the tables cannot be parsed without
            isa.register()
        self._ms: dict[str, object] = {}
        self._verified_path = self.folder / "verified.json"
        self.verified: dict[str, dict] = {}
        if self._verified_path.is_file():
            try:
                self.verified = json.loads(self._verified_path.read_text())
            except json.JSONDecodeError:  # never written half (atomic), but edited by hand
                say(f"{self._verified_path} is not valid JSON: ignored (tuned records will "
                    f"be checked again)")

    def ms_for(self, target):
        """The MetaSchedule database of ``target`` (``ms/<target key>/``)."""
        from tvm.s_tir import meta_schedule as ms

        key = target_key(target)
        if key not in self._ms:
            folder = self.folder / "ms" / key
            folder.mkdir(parents=True, exist_ok=True)
            for table in folder.glob("*.json"):
                repair_table(table)
            self._ms[key] = ms.database.JSONDatabase(work_dir=str(folder))
        return self._ms[key]

    def tiles_for(self, target) -> tile_search.TileRecords:
        return tile_search.TileRecords(self.folder / "tiles" / f"{target_key(target)}.json")

    @staticmethod
    def key(func: tvm.tirx.PrimFunc, target) -> str:
        return f"{tvm_ffi.structural_hash(_workload(func)):x}|{target}"

    def has_record(self, func, target) -> bool:
        if tile_search.applies(func, target):
            return self.tiles_for(target).get(func) is not None
        mod = _workload(func)
        db = self.ms_for(target)
        return db.has_workload(mod) and db.query_tuning_record(mod, target, "main") is not None

    def schedule(self, func, target):
        """The best recorded schedule of ``func`` on ``target`` (None: no record), with the
        attributes of ``func`` (the workload was renamed "main" for the database)."""
        if tile_search.applies(func, target):
            tile = self.tiles_for(target).get(func)
            return None if tile is None else tile_search.scheduled(func, target, *tile)
        sch = self.ms_for(target).query_schedule(_workload(func), target, "main")
        if sch is None:
            return None
        tuned = sch.mod["main"].without_attr("global_symbol")
        if "global_symbol" in func.attrs:
            tuned = tuned.with_attr("global_symbol", func.attrs["global_symbol"])
        return tuned

    def remember(self, key: str, entry: dict) -> None:
        """Store the judgement of a workload's best record: ok (reference check), detail,
        tuned_ms / default_ms (timed side by side), use (tuned schedule taken)."""
        self.verified[key] = entry
        tmp = self._verified_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.verified, indent=1))
        os.replace(tmp, self._verified_path)  # atomic: an interrupted run leaves the old file


def repair_table(path: Path) -> int:
    """Drop the lines of a MetaSchedule JSON table (one record per line, appended as tuning
    goes) that do not parse, e.g. the last line of a run killed mid-write, which would make
    the whole database unreadable; returns the number dropped (reported on stderr)."""
    lines = path.read_text().splitlines(keepends=True)
    good = []
    for line in lines:
        try:
            if line.strip():
                json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            continue
    dropped = len(lines) - len(good)
    if dropped:
        if good and not good[-1].endswith("\n"):
            good[-1] += "\n"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(good))
        os.replace(tmp, path)
        say(f"{path}: dropped {dropped} unreadable line(s) (an interrupted tuning run?); the "
            f"other records are kept")
    return dropped


def build_candidate(mod, target, _params):
    """MetaSchedule's default build minus its ``import tvm.s_tir.tensor_intrin``: that import
    parses every CUDA intrinsic (20-50 s here), longer than the 30 s build timeout, so on a
    busy 2-core machine every candidate of the first batch timed out. Tensorized candidates
    already carry the intrinsic's body; building them needs no registry."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def search_space(target):
    """MetaSchedule's x86 VNNI search space (ScheduleRule::DefaultX86("vnni") and its
    postprocessors, rebuilt here) with the target's dot-form intrinsic (isa/) in place of the
    stock one, so tuned traces name our intrinsic: replaying them at build time then needs
    only isa/, not TVM's 20-50 s intrinsic package import. Targets without a dot-form
    instruction set get the plain x86 space."""
    from tvm.s_tir import meta_schedule as ms

    isa = isa_of(target)
    rules = ms.schedule_rule
    reuse_write = rules.ReuseType(req="may", levels=[1, 2], scope="global")
    tiling = [rules.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64,
                                     reuse_write=reuse_write)]
    if isa is not None and not isa.pairs:
        tiling.insert(0, rules.MultiLevelTilingWithIntrin(
            isa.register(), structure="SSRSRS", max_innermost_factor=64, reuse_write=reuse_write))
    sch_rules = [
        rules.ApplyCustomRule(),
        rules.InlineConstantScalars(),
        rules.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                         disallow_if_then_else=True, require_injective=True,
                         require_ordered=True, disallow_op=["tirx.exp"]),
        rules.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        *tiling,
        rules.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                         unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        rules.RandomComputeLocation(),
    ]
    post = ms.postproc
    postprocs = [post.DisallowDynamicLoop(), post.RewriteParallelVectorizeUnroll(),
                 post.RewriteReductionBlock(), post.RewriteTensorize(vectorize_init_loop=True)]
    return ms.space_generator.PostOrderApply(sch_rules=sch_rules, postprocs=postprocs,
                                             mutator_probs="llvm")


@contextlib.contextmanager
def _without_stock_intrinsics():
    """MetaSchedule's TuneContext imports ``tvm.s_tir.tensor_intrin`` (every stock intrinsic,
    CUDA ones included: 36-50 s here, minutes under load) although lowbit's search space names
    only its own intrinsics (isa/). While tuning, an empty module stands in for the
    package if nobody imported it yet; it is removed afterwards, so a later real import works."""
    key = "tvm.s_tir.tensor_intrin"
    if key in sys.modules:
        yield
        return
    sys.modules[key] = types.ModuleType(key)
    try:
        yield
    finally:
        if getattr(sys.modules.get(key), "__file__", None) is None:
            del sys.modules[key]


def _tune_one(name, func, target, db: TuningDB, trials: int, cores: int) -> str:
    """MetaSchedule on one kernel, its output into ``<db>/tune.log``; returns the summary:
    trials measured of ``trials`` (and why fewer), failures, best time."""
    from tvm.s_tir import meta_schedule as ms

    database, workload = db.ms_for(target), _workload(func)
    work_dir = db.folder / "logs" / name
    before, valid_before, sizes = len(database), _valid_records(database, workload), \
        log_sizes(work_dir)
    with into_log(db.folder / TUNE_LOG, f"{name} on {target_key(target)}: {trials} trials"), \
            _without_stock_intrinsics():
        builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=BUILD_TIMEOUT_S,
                                          f_build=build_candidate)
        runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
        ms.tir_integration.tune_tir(
            workload, target, work_dir=str(work_dir),
            max_trials_global=trials, num_trials_per_iter=min(64, trials), database=database,
            builder=builder, runner=runner, space=search_space(target), num_tuning_cores=cores)
    return _trials_summary(len(database) - before,
                           _valid_records(database, workload) - valid_before, trials,
                           shortfall_reason(work_dir, sizes),
                           db.ms_for(target).query_tuning_record(workload, target, "main"))


def _valid_records(database, workload) -> int:
    """Records of ``workload`` that ran (MetaSchedule commits a failed candidate too, with a
    run time of 1e10 s, which ``get_top_k`` leaves out)."""
    if not database.has_workload(workload):
        return 0
    return len(database.get_top_k(database.commit_workload(workload), 1 << 30))


def _trials_summary(measured: int, valid: int, asked: int, why_short: str, best_rec) -> str:
    """``60 of 64 trials (the search found no new candidate), 12 failed to build or run;
    best 0.1234 ms``."""
    short = f" ({why_short})" if measured < asked and why_short else ""
    failed = f", {measured - valid} failed to build or run" if measured > valid else ""
    best = (f"best {min(float(x) for x in best_rec.run_secs) * 1e3:.4f} ms"
            if best_rec is not None and best_rec.run_secs else "no valid candidate")
    return f"{measured} of {asked} trials{short}{failed}; {best}"


def tune_module(mod: tvm.IRModule, target, tune: Tune, *, progress: bool = True
                ) -> dict[str, tvm.tirx.PrimFunc]:
    """Tune the kernels of ``mod`` that have no record yet; return name -> tuned PrimFunc for
    the kernels whose best record passed the reference check and beat the default schedule."""
    db = TuningDB(tune.db)
    funcs = {n: f for n, f in prim_funcs(mod).items() if _wanted(n, f, tune.kernels)}
    unique: dict[str, str] = {}  # workload key -> first function name
    for name, func in funcs.items():
        unique.setdefault(TuningDB.key(func, target), name)
    missing = [n for n in unique.values() if not db.has_record(funcs[n], target)]
    todo = missing if tune.trials else []
    shares = split_trials(tune.trials, len(todo))
    say(f"tuning: {len(unique)} kernel(s), {len(unique) - len(missing)} already in "
        f"{db.folder}, {len(todo)} to tune" + (
            f" ({sum(shares)} trials, {_per_kernel(shares)} per kernel; MetaSchedule's "
            f"output in {db.folder / TUNE_LOG})" if todo else ""), enabled=progress)
    if todo:
        cores = tune.num_cores or int(target.attrs.get("num-cores", 1))
        with progress_bar(total=len(todo), desc="tuning", unit="task",
                          enabled=progress) as shown:
            for i, (name, trials) in enumerate(zip(todo, shares), 1):
                shown.set_postfix_str(name)
                t0 = time.perf_counter()
                try:
                    if tile_search.applies(funcs[name], target):
                        outcome = tile_search.search(funcs[name], target, db.tiles_for(target))
                    else:
                        outcome = _tune_one(name, funcs[name], target, db, trials, cores)
                    verdict = _judged(db, funcs[name], target, tune.verify)
                except Exception as e:  # noqa: BLE001  (a failed task keeps its default)
                    outcome = (f"failed ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[-1][:200]}); default schedule")
                    verdict = ""
                say(f"tuning {i}/{len(todo)} {name}: {outcome}{verdict} "
                    f"({time.perf_counter() - t0:.0f} s)", enabled=progress)
                shown.update()
    chosen: dict[str, tvm.tirx.PrimFunc] = {}
    for name, func in funcs.items():
        key = TuningDB.key(func, target)
        if "use" not in db.verified.get(key, {}):   # a record of an earlier run, never judged
            verdict = _judged(db, func, target, tune.verify)
            if verdict:
                say(f"  {name}{verdict}", enabled=progress)
        if db.verified.get(key, {}).get("use"):
            chosen[name] = db.schedule(func, target)
    return chosen


def split_trials(trials: int, tasks: int) -> list[int]:
    """``trials`` shared over ``tasks`` kernels so that the shares add up to the budget (64
    over 6: 11, 11, 11, 11, 10, 10; ``trials // tasks`` each ran 60), at least 1 each."""
    if tasks == 0:
        return []
    base, extra = divmod(trials, tasks)
    return [max(1, base + (i < extra)) for i in range(tasks)]


def _per_kernel(shares: list[int]) -> str:
    lo, hi = min(shares), max(shares)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _judged(db: TuningDB, func, target, verify: bool) -> str:
    """Judge the best record of ``func`` once (``_judge``), remember the verdict in the
    database; returns it for the summary line ("" when there is no record, or it was judged
    before)."""
    key = TuningDB.key(func, target)
    sched = db.schedule(func, target)
    if sched is None or "use" in db.verified.get(key, {}):
        return ""
    entry = _judge(func, sched, target, verify)
    db.remember(key, entry)
    timed = (f"; tuned {entry['tuned_ms']:.4f} ms vs default {entry['default_ms']:.4f} ms"
             if "tuned_ms" in entry else "")
    return f"; {entry['detail']}{timed} -> {'tuned' if entry['use'] else 'DEFAULT'}"


def _judge(func, sched, target, verify: bool) -> dict:
    """Check ``sched`` against the reference, then time it against the default schedule
    (interleaved, same inputs): a tuned kernel is used only if correct and faster. Search
    timings on a shared machine can be taken under a neighbour's load; this one compares both
    schedules under the same conditions."""
    entry: dict = {"ok": True, "detail": "not checked"}
    if verify:
        res = check_schedule(func, sched, target)
        entry = {"ok": res.ok, "detail": res.detail}
        if not res.ok:
            return dict(entry, use=False, detail=f"REJECTED: {res.detail}")
    default = default_schedule_of(func, target)
    if default is None:
        return dict(entry, use=True)
    tuned_s, default_s = time_kernels([sched, default], target)
    return dict(entry, tuned_ms=tuned_s * 1e3, default_ms=default_s * 1e3,
                use=tuned_s < default_s)
