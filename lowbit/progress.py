"""Progress bars for long work (calibration, compilation, tuning, training, evaluation).

One place decides how progress looks: a tqdm bar on stderr when stderr is a terminal, nothing
when it is not (a log file, a CI run, a pipe), unless ``LOWBIT_PROGRESS`` says otherwise
(``1``: always draw, ``0``: never). Callers keep their one summary line at the end ("calibrated
on 8 batch(es) in 3.1 s"): that line is printed whether or not a bar was drawn, through ``say``,
which writes above a bar in flight instead of through it.

    for batch in progress.bar(batches, desc="calibrating", unit="batch", enabled=progress):
        ...
    progress.say(f"calibrated on {n} batch(es) in {dt:.1f} s", enabled=progress)

    with progress.bar(total=len(tasks), desc="tuning", unit="task") as bar:
        ...; bar.update()

    with progress.stages(("import", "prepare", "build"), desc="compiling") as stage:
        stage("import"); ...; stage("prepare"); ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

__all__ = ["LogHandler", "bar", "drawing", "say", "stages"]


def drawing(enabled: bool = True) -> bool:
    """Whether a bar is drawn: ``enabled`` and (``LOWBIT_PROGRESS=1`` or stderr a terminal)."""
    if not enabled:
        return False
    forced = os.environ.get("LOWBIT_PROGRESS", "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
        unit: str = "it", enabled: bool = True, leave: bool = False) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), disabled when not
    ``drawing(enabled)``. The bar is removed when done (``leave=False``) so the caller's
    summary line stays the record."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=f"[lowbit] {desc}" if desc else None, unit=unit,
                leave=leave, file=sys.stderr, disable=not drawing(enabled), dynamic_ncols=True)


def say(msg: str, *, enabled: bool = True) -> None:
    """The summary line of a step, ``[lowbit] msg`` on stderr, whether or not bars are drawn;
    written above any bar in flight (``tqdm.write``) so the bar is not torn."""
    if not enabled:
        return
    from tqdm.auto import tqdm

    tqdm.write(f"[lowbit] {msg}", file=sys.stderr)
    sys.stderr.flush()


@contextlib.contextmanager
def stages(names: Sequence[str], *, desc: str, enabled: bool = True
           ) -> Iterator[Callable[[str], None]]:
    """A bar over the named stages of one long call (``stage(name)`` when each starts: the bar
    shows the stage running and the time spent so far)."""
    with bar(total=len(names), desc=desc, unit="stage", enabled=enabled) as b:
        started: list[str] = []

        def stage(name: str) -> None:
            if started:
                b.update()
            started.append(name)
            b.set_postfix_str(name)

        yield stage
        if started:
            b.update()


class LogHandler(logging.Handler):
    """A logging handler for stderr that writes above any bar in flight (``tqdm.write``), as
    ``say`` does; the CLI installs it on the root logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging's contract: report, never raise)
            self.handleError(record)
