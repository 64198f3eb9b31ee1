"""Pass contract and Pipeline: honest modified, fixpoints, errors naming earlier passes."""

import dataclasses

import pytest

from lowbit.errors import PassFailure, PostconditionError, PreconditionError
from lowbit.passes.infra import Pass, PassResult, Pipeline


@dataclasses.dataclass(frozen=True)
class AddUntil(Pass):
    """Toy pass on a list: append `step` until the length reaches `limit`."""

    limit: int
    step: int = 1

    def call(self, xs):
        if len(xs) >= self.limit:
            return PassResult(xs, False)
        xs.append(self.step)
        return PassResult(xs, True)


@dataclasses.dataclass(frozen=True)
class Boom(Pass):
    def call(self, xs):
        raise RuntimeError("kaput")


@dataclasses.dataclass(frozen=True)
class NeedsNonEmpty(Pass):
    def requires(self, xs):
        assert xs, "empty input"

    def call(self, xs):
        return PassResult(xs, False)


@dataclasses.dataclass(frozen=True)
class BreaksOutput(Pass):
    def ensures(self, xs):
        assert len(xs) < 2, f"{len(xs)} elements"

    def call(self, xs):
        xs.extend([0, 0])
        return PassResult(xs, True)


def test_single_run_and_fixpoint():
    res = Pipeline([AddUntil(3)])([])
    assert res.graph == [1] and res.modified
    p = Pipeline([AddUntil(3)], fixpoint=True)
    res = p([])
    assert res.graph == [1, 1, 1] and res.modified
    assert p.report.iterations == 4  # three changing iterations and one that changes nothing
    res = p(res.graph)
    assert not res.modified


def test_fixpoint_not_reached_is_an_error():
    with pytest.raises(PassFailure, match="did not reach a fixpoint in 3 iterations.*AddUntil"):
        Pipeline([AddUntil(100)], fixpoint=True, max_iterations=3)([])


def test_failure_names_pass_and_predecessors():
    with pytest.raises(PassFailure) as e:
        Pipeline([AddUntil(5), NeedsNonEmpty(), Boom()])([])
    msg = str(e.value)
    assert "pass Boom failed" in msg and "kaput" in msg
    assert "passes that ran before it: AddUntil, NeedsNonEmpty" in msg


def test_requires_and_ensures():
    with pytest.raises(PreconditionError, match="NeedsNonEmpty: precondition failed: empty input"):
        NeedsNonEmpty()([])
    with pytest.raises(PostconditionError, match="BreaksOutput: postcondition failed: 2 elements"):
        BreaksOutput()([])


def test_call_must_return_pass_result():
    @dataclasses.dataclass(frozen=True)
    class Wrong(Pass):
        def call(self, xs):
            return xs

    with pytest.raises(TypeError, match="Wrong.call returned list"):
        Wrong()([])


def test_report_prints():
    p = Pipeline([AddUntil(1)])
    p([])
    assert "AddUntil" in str(p.report) and "modified" in str(p.report)
