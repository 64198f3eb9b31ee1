"""MetaSchedule's output kept off the terminal: everything it prints goes to ``<db>/tune.log``.

MetaSchedule talks three ways while it tunes one task:

- Python loggers under ``tvm.s_tir.meta_schedule``: the search tables ("ID | Name | FLOP |
  Weight | Speed (GFLOPS) | ... | Trials | Done", redrawn after every batch) and XGBoost's
  "XGB iter" lines at DEBUG. ``tune_tir`` calls ``create_loggers``, which points a console
  handler at ``sys.stdout`` with the level that logger has at the time; the level it leaves
  behind is DEBUG, so from the second task on every line reached the terminal (36-38 lines a
  task in ``lowbit demo``);
- C++ ``LOG`` lines written to fd 2, and whatever XGBoost's native library prints;
- the builder and runner worker processes, which inherit fd 1 and fd 2 when they start.

``into_log(path, header)`` sends all of it to ``path`` (appended, a header line per task):
``sys.stdout``/``sys.stderr`` and the C-level fds 1 and 2 point at the file for the call, the
MetaSchedule logger is at DEBUG (the full log, and no "Logging level set to WARNING" complaint),
and afterwards the loggers are put back as they were, with the handlers MetaSchedule added
closed (the next task adds its own). MetaSchedule's own per-task logs stay where it writes them
(``<db>/logs/<kernel>/logs/``). The terminal gets one line per task from ``tune.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MS_LOGGER", "TUNE_LOG", "into_log", "log_sizes", "shortfall_reason"]

TUNE_LOG = "tune.log"
MS_LOGGER = "tvm.s_tir.meta_schedule"


def _ms_loggers() -> dict[str, logging.Logger]:
    manager = logging.Logger.manager
    return {name: lg for name, lg in list(manager.loggerDict.items())
            if isinstance(lg, logging.Logger)
            and (name == MS_LOGGER or name.startswith(MS_LOGGER + "."))}


@contextlib.contextmanager
def _loggers_restored() -> Iterator[None]:
    """The MetaSchedule loggers' level, propagation and handlers as they were before (those
    created meanwhile, e.g. the per-task ones, as a new logger is: NOTSET, propagating, no
    handler); the handlers added meanwhile (by ``create_loggers``'s dictConfig) are closed."""
    ms_log = logging.getLogger(MS_LOGGER)
    saved = {name: (lg.level, lg.propagate, list(lg.handlers))
             for name, lg in _ms_loggers().items()}
    ms_log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for name, lg in _ms_loggers().items():
            level, propagate, handlers = saved.get(name, (logging.NOTSET, True, []))
            for h in lg.handlers:
                if h not in handlers:
                    with contextlib.suppress(Exception):
                        h.close()
            lg.handlers = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@contextlib.contextmanager
def into_log(path: Path, header: str) -> Iterator[None]:
    """Everything printed or logged during the block goes to ``path`` (see the module
    docstring), after a ``===== <time> <header>`` line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1, encoding="utf-8") as log, _loggers_restored():
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        log.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = [(fd, os.dup(fd)) for fd in (1, 2)]
        try:
            for fd, _ in saved:
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)


# What MetaSchedule's per-task log says when a task measured fewer candidates than asked, and
# how the summary line puts it (evolutionary_search.cc: the search gives up when it cannot
# sample enough unmeasured schedules, or after 5 rounds that found no new candidate).
_SHORTFALLS = (
    ("Cannot sample enough initial population",
     "the search could not sample enough new schedules"),
    ("Sending 0 candidates(s) for measurement", "the search found no new candidate"),
)


def log_sizes(work_dir: Path) -> dict[Path, int]:
    """The sizes of MetaSchedule's per-task logs in ``work_dir`` now (where this run starts)."""
    return {f: f.stat().st_size for f in (work_dir / "logs").glob("*.log")} \
        if (work_dir / "logs").is_dir() else {}


def shortfall_reason(work_dir: Path, since: dict[Path, int]) -> str:
    """Why MetaSchedule stopped a task early, from what its logs in ``work_dir``
    (``<db>/logs/<kernel>``) gained after ``since`` (``log_sizes`` before the run); "" when
    they do not say."""
    text = ""
    for f in sorted((work_dir / "logs").glob("*.log")):
        with contextlib.suppress(OSError), open(f, "rb") as fh:
            fh.seek(since.get(f, 0))
            text += fh.read().decode(errors="replace")
    for needle, reason in _SHORTFALLS:
        if needle in text:
            return reason
    return ""
