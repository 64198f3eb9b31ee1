"""Named filters for the third-party warnings lowbit knows to be harmless, applied only around
the calls that raise them.

Each ``NamedFilter`` names one warning: how it arrives (a Python ``warnings`` warning, a record
of a library's logger, or a C++ ``LOG`` line written straight to stderr), a regex of its text,
where it comes from (the warning's module, the logger's name, the library), and one line on why
it is safe to hide. ``quiet(*names)`` applies the named filters for the duration of one call
into a library, at lowbit's boundary with it:

    with quiet("torch-onnx-torchvision-ops"):
        torch.onnx.export(...)

Nothing is filtered when lowbit is imported, and nothing is filtered by category or library
alone: any other warning, from the same library included, still shows. A C++ line is caught by
pointing fd 2 at a temporary file for the call and writing back every line no filter names,
once the call returns (so they come out then, in order, not as they happen).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

__all__ = ["FILTERS", "NamedFilter", "copy_graph", "quiet"]

KINDS = ("warning", "log", "stderr")


@dataclasses.dataclass(frozen=True)
class NamedFilter:
    """One third-party warning lowbit hides, and why.

    Args:
        name: how call sites ask for it (``quiet(name)``).
        kind: "warning" (Python ``warnings``), "log" (a ``logging`` record) or "stderr" (a line
            a C++ library writes to fd 2).
        message: regex matched at the start of the message (for "stderr": anywhere in the
            line, whose prefix is a time and a source path).
        source: "warning": regex of the module the warning is attributed to; "log": the
            logger's exact name; "stderr": the library that writes the line (documentation).
        reason: why hiding it loses nothing.
        category: the warning class ("warning" only).
    """

    name: str
    kind: str
    message: str
    source: str
    reason: str
    category: type[Warning] = Warning

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"NamedFilter {self.name!r}: kind must be one of {KINDS}, got "
                             f"{self.kind!r}")
        re.compile(self.message)
        if not self.reason:
            raise ValueError(f"NamedFilter {self.name!r}: give the reason it is safe to hide")

    def matches(self, text: str) -> bool:
        return (re.search if self.kind == "stderr" else re.match)(self.message, text) is not None


FILTERS: dict[str, NamedFilter] = {f.name: f for f in (
    NamedFilter(
        "torch-leafspec-deepcopy", "warning",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"copyreg",
        "copying a captured graph (copy.deepcopy) re-creates the LeafSpec leaves torch.export "
        "itself keeps in the graph's input/output specs; torch 2.13 deprecates the class but "
        "still builds its specs with it", FutureWarning),
    NamedFilter(
        "torch-onnx-torchvision-ops", "log",
        r"torchvision is not installed\. Skipping torchvision::",
        "torch.onnx._internal.exporter._registration",
        "the ONNX exporter registers torchvision's detection ops (nms, roi_align, roi_pool, "
        "deform_conv2d) at every export; no transformer uses them"),
    NamedFilter(
        "onnxscript-fold-evaluation-failed", "log", r"Evaluation failed",
        "onnxscript.optimizer._constant_folding",
        "constant folding tries every node and keeps the ones it cannot evaluate (shape "
        "arithmetic left symbolic, ops it has no reference for): the graph stays correct"),
    NamedFilter(
        "tvm-take-fast-mode", "stderr",
        r"Warning: Fast mode segfaults when there are out-of-bounds indices", "libtvm (topi)",
        "TVM's embedding lookups do not check their indices; CompiledModule checks every "
        "index input on the host before each call (input_bounds.py) and warns where it cannot"),
    NamedFilter(
        "tvm-vm-scope-saving", "stderr", r"Warning: Scope Saving:", "libtvm (relax VM)",
        "TVM's VM executable logs each memory scope it serializes (a debugging line left at "
        "warning level in executable.cc); nothing is wrong"),
)}


class _LogFilter(logging.Filter):
    def __init__(self, filters: list[NamedFilter]):
        super().__init__()
        self.filters = filters

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f.matches(msg) for f in self.filters)


@contextlib.contextmanager
def _stderr_lines_dropped(filters: list[NamedFilter]) -> Iterator[None]:
    """fd 2 into a temporary file for the call; the lines no filter names are written back to
    the real stderr afterwards."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(2)
    except OSError:                       # no fd 2 (embedded interpreters): filter nothing
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(True)
                    if not any(f.matches(line) for f in filters)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Hide the named third-party warnings (``FILTERS``) for the duration of the block; every
    other warning still shows. Unknown names raise KeyError (a typo must not hide nothing)."""
    chosen = [FILTERS[n] for n in names]
    by_kind = {k: [f for f in chosen if f.kind == k] for k in KINDS}
    loggers: dict[str, list[NamedFilter]] = {}
    for f in by_kind["log"]:
        loggers.setdefault(f.source, []).append(f)
    installed = [(logging.getLogger(name), _LogFilter(fs)) for name, fs in loggers.items()]
    with contextlib.ExitStack() as stack:
        if by_kind["warning"]:
            stack.enter_context(warnings.catch_warnings())
            for f in by_kind["warning"]:
                warnings.filterwarnings("ignore", message=f.message, category=f.category,
                                        module=f.source)
        for logger, flt in installed:
            logger.addFilter(flt)
            stack.callback(logger.removeFilter, flt)
        if by_kind["stderr"]:
            stack.enter_context(_stderr_lines_dropped(by_kind["stderr"]))
        yield


def copy_graph(gm):
    """``copy.deepcopy`` of a captured graph (an ``fx.GraphModule``, or any model), without
    torch's deprecation warning about the LeafSpec leaves of its pytree specs."""
    import copy

    with quiet("torch-leafspec-deepcopy"):
        return copy.deepcopy(gm)
