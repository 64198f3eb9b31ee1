"""Pass infrastructure shared by the FX and ONNX passes.

A pass is a small frozen dataclass (its fields are its options) whose ``call(graph)`` returns
``PassResult(graph, modified)``. ``modified`` must be honest: running a pass a second time on its
own output reports ``modified=False`` (tests check this with ``lowbit.testing.assert_idempotent``).

Passes work on the object they are given (FX GraphModule or onnx_ir Model) and may change it in
place; user-facing entry points (``lowbit.quantize`` ...) copy the user's model first, so nothing
of the user's is mutated unless asked.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from lowbit.errors import PassFailure, PostconditionError, PreconditionError

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
    into ``PreconditionError``/``PostconditionError`` naming the pass.
    """

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
        try:
            self.ensures(result.graph)
        except PostconditionError:
            raise
        except Exception as e:
            raise PostconditionError(f"{self.name}: postcondition failed: {e}") from e
        return result


@dataclasses.dataclass
class PipelineReport:
    """Per-pass record of one pipeline run: (pass name, modified, seconds)."""

    steps: list[tuple[str, bool, float]] = dataclasses.field(default_factory=list)
    iterations: int = 0

    def __str__(self) -> str:
        rows = [f"{n:<32} {'modified' if m else 'unchanged':<10} {s * 1e3:8.1f} ms"
                for n, m, s in self.steps]
        return "\n".join(rows + [f"({self.iterations} iteration(s))"])


class Pipeline:
    """Runs passes in order, once or until no pass reports a change.

    Errors raised inside a pass are re-raised as ``PassFailure`` naming the failing pass and
    every pass that ran before it, so a failure deep in a pipeline can be traced.
    """

    def __init__(self, passes: Iterable[Pass], *, fixpoint: bool = False, max_iterations: int = 10):
        self.passes: list[Pass] = list(passes)
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations
        self.report = PipelineReport()

    def __call__(self, graph: Any) -> PassResult:
        self.report = PipelineReport()
        ran: list[str] = []
        any_change = False
        for it in range(self.max_iterations if self.fixpoint else 1):
            self.report.iterations = it + 1
            changed = False
            for p in self.passes:
                t0 = time.perf_counter()
                try:
                    res = p(graph)
                except Exception as e:
                    before = ", ".join(ran) if ran else "none"
                    raise PassFailure(
                        f"pass {p.name} failed (iteration {it + 1}): {type(e).__name__}: {e}\n"
                        f"  passes that ran before it: {before}"
                    ) from e
                dt = time.perf_counter() - t0
                self.report.steps.append((p.name, res.modified, dt))
                log.debug("%s: modified=%s (%.1f ms)", p.name, res.modified, dt * 1e3)
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
        return PassResult(graph, any_change)

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(p.name for p in self.passes)}], fixpoint={self.fixpoint})"


def names(passes: Sequence[Pass]) -> list[str]:
    return [p.name for p in passes]
