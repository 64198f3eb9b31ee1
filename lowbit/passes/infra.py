"""Pass infrastructure shared by the FX and ONNX passes.

A pass is a small frozen dataclass (its fields are its options) whose ``call(graph)`` returns
``PassResult(graph, modified)``. ``modified`` must be honest: running a pass a second time on its
own output reports ``modified=False`` (tests check this with ``lowbit.testing.assert_idempotent``).

Every pass declares how it treats its input, as onnx-ir's ``InPlacePass`` / ``FunctionalPass``
do, with the class attribute ``in_place``:

    in_place = True    changes the object it is given (FX GraphModule, onnx_ir Model) and
                       returns that same object (the default; every pass in lowbit/passes is)
    in_place = False   functional: leaves its input alone and returns a new object

and ``Pass.__call__`` raises ``PostconditionError`` when a pass breaks its declaration. The
user-facing entry point (``lowbit.quantize``) copies the user's model once and then runs
in-place passes on the copy, so nothing of the user's is mutated.

A ``Pipeline`` runs passes in order (once or to a fixpoint) and keeps a ``PipelineReport``:
per pass, whether it modified the graph and how long it took. The report is logged at DEBUG
on the ``lowbit.passes`` logger (``lowbit -v`` shows it) and kept as ``pipeline.report``.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from lowbit.errors import LowbitError, PassFailure, PostconditionError, PreconditionError

__all__ = ["Pass", "PassResult", "Pipeline", "PipelineReport"]

log = logging.getLogger("lowbit.passes")


@dataclasses.dataclass
class PassResult:
    """What a pass returns: the (possibly same) graph object and whether it changed."""

    graph: Any
    modified: bool


class Pass(abc.ABC):
    """Base class. Subclasses are ``@dataclass(frozen=True)`` and implement ``call``.

    ``requires``/``ensures`` raise (any exception) to refuse a graph; the base turns that
    into ``PreconditionError``/``PostconditionError`` naming the pass. ``in_place`` (a class
    attribute, not a dataclass field) declares whether the pass returns the object it was
    given, changed (True, the default) or a new object, leaving its input alone (False);
    breaking that promise raises ``PostconditionError``.
    """

    in_place: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def call(self, graph: Any) -> PassResult:
        """Transform ``graph``; return the result and an honest ``modified`` flag."""

    def requires(self, graph: Any) -> None:
        """Check preconditions; raise to refuse."""

    def ensures(self, graph: Any) -> None:
        """Check postconditions; raise to refuse."""

    def __call__(self, graph: Any) -> PassResult:
        if isinstance(graph, PassResult):
            graph = graph.graph
        try:
            self.requires(graph)
        except PreconditionError:
            raise
        except Exception as e:
            raise PreconditionError(f"{self.name}: precondition failed: {e}") from e
        result = self.call(graph)
        if not isinstance(result, PassResult):
            raise TypeError(f"{self.name}.call returned {type(result).__name__}, not PassResult")
        if self.in_place and result.graph is not graph:
            raise PostconditionError(f"{self.name} is declared in place (in_place = True) but "
                                     f"returned a new {type(result.graph).__name__}, not the "
                                     f"one it was given: return it, or set in_place = False")
        if not self.in_place and result.graph is graph:
            raise PostconditionError(f"{self.name} is declared functional (in_place = False) but "
                                     f"returned the object it was given: return a new one, or "
                                     f"set in_place = True")
        try:
            self.ensures(result.graph)
        except PostconditionError:
            raise
        except Exception as e:
            raise PostconditionError(f"{self.name}: postcondition failed: {e}") from e
        return result


@dataclasses.dataclass
class PipelineReport:
    """Per-pass record of one pipeline run: (pass name, modified, seconds), in run order.

    ``str(report)`` is a table, one row per pass run, then the iteration count and total time.
    """

    steps: list[tuple[str, bool, float]] = dataclasses.field(default_factory=list)
    iterations: int = 0
    name: str = ""

    @property
    def seconds(self) -> float:
        return sum(s for _, _, s in self.steps)

    @property
    def modified(self) -> bool:
        return any(m for _, m, _ in self.steps)

    def __str__(self) -> str:
        head = [f"pipeline {self.name}:"] if self.name else []
        rows = [f"  {n:<30} {'modified' if m else 'unchanged':<10} {s * 1e3:9.1f} ms"
                for n, m, s in self.steps]
        tail = f"  ({self.iterations} iteration(s), {self.seconds:.2f} s)"
        return "\n".join([*head, *rows, tail])


class Pipeline:
    """Runs passes in order, once or until no pass reports a change.

    An unexpected error raised inside a pass (a bug) is re-raised as ``PassFailure`` naming the
    failing pass and every pass that ran before it, so a failure deep in a pipeline can be
    traced. A ``LowbitError`` (``ConfigError``, ``CalibrationError``, ``PreconditionError``...:
    a refusal that already names the value at fault) keeps its type, so callers can catch it as
    such; the pipeline adds a note naming the pass and the passes before it.

    After a run, ``report`` holds the ``PipelineReport`` (also logged at DEBUG on
    ``lowbit.passes``). ``name`` labels it. ``in_place`` is True when every pass is in place.
    """

    def __init__(self, passes: Iterable[Pass], *, fixpoint: bool = False, max_iterations: int = 10,
                 name: str = ""):
        self.passes: list[Pass] = list(passes)
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations
        self.name = name
        self.report = PipelineReport(name=name)

    @property
    def in_place(self) -> bool:
        return all(p.in_place for p in self.passes)

    def __call__(self, graph: Any) -> PassResult:
        self.report = PipelineReport(name=self.name)
        ran: list[str] = []
        any_change = False
        for it in range(self.max_iterations if self.fixpoint else 1):
            self.report.iterations = it + 1
            changed = False
            for p in self.passes:
                t0 = time.perf_counter()
                try:
                    res = p(graph)
                except LowbitError as e:
                    if not isinstance(e, PassFailure) and hasattr(e, "add_note"):  # 3.11+
                        e.add_note(f"(in pass {p.name}, iteration {it + 1}; passes that ran "
                                   f"before it: {', '.join(ran) if ran else 'none'})")
                    raise
                except Exception as e:
                    before = ", ".join(ran) if ran else "none"
                    raise PassFailure(
                        f"pass {p.name} failed (iteration {it + 1}): {type(e).__name__}: {e}\n"
                        f"  passes that ran before it: {before}"
                    ) from e
                dt = time.perf_counter() - t0
                self.report.steps.append((p.name, res.modified, dt))
                ran.append(p.name)
                graph = res.graph
                changed |= res.modified
            any_change |= changed
            if not changed:
                break
        else:
            if self.fixpoint and changed:
                raise PassFailure(
                    f"pipeline did not reach a fixpoint in {self.max_iterations} iterations; "
                    f"passes still changing the graph: "
                    f"{sorted({n for n, m, _ in self.report.steps[-len(self.passes):] if m})}"
                )
        log.debug("%s", self.report)
        return PassResult(graph, any_change)

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(p.name for p in self.passes)}], fixpoint={self.fixpoint})"


def names(passes: Sequence[Pass]) -> list[str]:
    return [p.name for p in passes]
