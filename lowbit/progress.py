"""Progress bars for long work (calibration, compilation, tuning, training, evaluation).

One place decides how progress looks: a tqdm bar on stderr when stderr is a terminal, nothing
when it is not (a log file, a CI run, a pipe), unless ``LOWBIT_PROGRESS`` says otherwise
(``1``: always draw, ``0``: never). Callers keep their one summary line at the end ("calibrated
on 8 batch(es) in 3.1 s"): that line is printed whether or not a bar was drawn.

    for batch in progress.bar(batches, desc="calibrating", unit="batch", enabled=progress):
        ...
    with progress.bar(total=len(tasks), desc="tuning", unit="task") as bar:
        ...; bar.update()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["bar", "drawing"]


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
