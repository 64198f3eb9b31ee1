"""tune_log.py and the terminal side of tuning, without running a search: MetaSchedule's loggers
set up as ``tune_tir`` sets them up, C-level writes and a worker process all land in
``<db>/tune.log`` and never on the terminal (the second task included, which used to print
its tables); the loggers are put back afterwards; the trials of a budget add up to it; the
one-line summary of a task."""

import logging
import os
import subprocess
import sys

import pytest

from lowbit.backends.tvm import tune
from lowbit.backends.tvm.tune_log import (
    MS_LOGGER,
    TUNE_LOG,
    into_log,
    log_sizes,
    shortfall_reason,
)


def _task(work_dir, name="main"):
    """What one ``tune_tir`` call does to logging (MetaSchedule's create_loggers), then a
    search table at INFO and an XGBoost line at DEBUG, as the task scheduler logs them."""
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    (task_logger,) = get_loggers_from_work_dir(str(work_dir), [name])
    scheduler = logging.getLogger(MS_LOGGER + ".task_scheduler")
    scheduler.info("\n ID | Name | FLOP | Weight | Speed (GFLOPS) | Trials | Done\n")
    logging.getLogger(MS_LOGGER + ".cost_model.xgb_model").debug("XGB iter   0: tr-p-rmse 0.5")
    task_logger.warning("Cannot sample enough initial population, evolutionary search failed.")


def test_everything_goes_to_the_log(tmp_path, capfd):
    ms_log = logging.getLogger(MS_LOGGER)
    state = (ms_log.level, ms_log.propagate, list(ms_log.handlers))
    log = tmp_path / TUNE_LOG
    for task in ("k1", "k2"):                      # the second task used to reach the terminal
        with into_log(log, f"{task}: 8 trials"):
            _task(tmp_path / "logs" / task)
            print("python stdout")
            print("python stderr", file=sys.stderr)
            os.write(1, b"fd 1 from C\n")
            os.write(2, b"[17:17:44] vectorize_loop.cc:1058: Warning: Detect vectorize\n")
            worker = "import os; os.write(1, b'worker 1\\n'); os.write(2, b'worker 2\\n')"
            subprocess.run([sys.executable, "-c", worker], check=True)
        assert (ms_log.level, ms_log.propagate, list(ms_log.handlers)) == state
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = log.read_text()
    assert text.count("===== ") == 2 and "k1: 8 trials" in text and "k2: 8 trials" in text
    for line in ("Speed (GFLOPS)", "XGB iter", "python stdout", "python stderr", "fd 1 from C",
                 "Detect vectorize", "worker 1", "worker 2"):
        assert text.count(line) == 2, line
    logging.getLogger(MS_LOGGER + ".task_scheduler").warning("after tuning: not in the log")
    assert "after tuning" not in log.read_text()


def test_the_log_is_kept_when_the_search_raises(tmp_path, capfd):
    with pytest.raises(RuntimeError, match="search failed"), into_log(tmp_path / TUNE_LOG, "k"):
        os.write(2, b"last words\n")
        raise RuntimeError("search failed")
    os.write(2, b"back on the terminal\n")
    assert capfd.readouterr().err == "back on the terminal\n"
    assert "last words" in (tmp_path / TUNE_LOG).read_text()


def test_shortfall_reason_reads_this_run_only(tmp_path):
    work = tmp_path / "logs" / "main"
    with into_log(tmp_path / TUNE_LOG, "first run"):
        _task(work)
    assert shortfall_reason(work, {}) == "the search could not sample enough new schedules"
    sizes = log_sizes(work)
    assert sizes and shortfall_reason(work, sizes) == ""


@pytest.mark.parametrize("trials,tasks,shares", [
    (64, 6, [11, 11, 11, 11, 10, 10]), (64, 7, [10, 9, 9, 9, 9, 9, 9]), (64, 1, [64]),
    (2, 3, [1, 1, 1]), (5, 0, [])])
def test_a_budget_is_split_so_that_it_adds_up(trials, tasks, shares):
    assert tune.split_trials(trials, tasks) == shares


class _Record:
    run_secs = (1.5e-4, 1.2e-4)


def test_trials_summary():
    assert tune._trials_summary(9, 2, 9, "", _Record()) == \
        "9 of 9 trials, 7 failed to build or run; best 0.1200 ms"
    assert tune._trials_summary(60, 60, 64, "the search found no new candidate", _Record()) == \
        "60 of 64 trials (the search found no new candidate); best 0.1200 ms"
    assert tune._trials_summary(4, 0, 4, "", None) == \
        "4 of 4 trials, 4 failed to build or run; no valid candidate"
