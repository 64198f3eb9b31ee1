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


# ---- in-place vs functional, declared and enforced -----------------------------------------
@dataclasses.dataclass(frozen=True)
class CopyAppend(Pass):
    """Functional: returns a new list, the input left alone."""

    in_place = False

    def call(self, xs):
        return PassResult([*xs, 0], True)


@dataclasses.dataclass(frozen=True)
class LiesInPlace(Pass):
    def call(self, xs):     # in_place defaults to True, but this returns a new object
        return PassResult(list(xs), False)


@dataclasses.dataclass(frozen=True)
class LiesFunctional(Pass):
    in_place = False

    def call(self, xs):
        return PassResult(xs, False)


def test_in_place_declared_and_enforced():
    xs = [1]
    assert AddUntil(3).in_place and not CopyAppend().in_place
    res = CopyAppend()(xs)
    assert res.graph == [1, 0] and xs == [1]
    with pytest.raises(PostconditionError, match="LiesInPlace is declared in place"):
        LiesInPlace()([])
    with pytest.raises(PostconditionError, match="LiesFunctional is declared functional"):
        LiesFunctional()([])
    assert Pipeline([AddUntil(3)]).in_place and not Pipeline([AddUntil(3), CopyAppend()]).in_place
    assert "in_place" not in {f.name for f in dataclasses.fields(CopyAppend)}   # not an option


def test_every_lowbit_pass_declares_in_place():
    """Each pass class in lowbit/passes says in_place itself (not inherited by accident)."""
    import importlib
    import pkgutil

    import lowbit.passes

    classes = set()
    for info in pkgutil.walk_packages(lowbit.passes.__path__, "lowbit.passes."):
        module = importlib.import_module(info.name)
        classes |= {c for c in vars(module).values() if isinstance(c, type)
                    and issubclass(c, Pass) and c is not Pass and c.__module__ == info.name}
    assert len(classes) >= 11
    undeclared = sorted(f"{c.__module__}.{c.__name__}" for c in classes
                        if "in_place" not in vars(c))
    assert not undeclared, f"declare in_place = True / False in: {undeclared}"


def test_lowbit_errors_keep_their_type_with_a_note():
    from lowbit.errors import ConfigError

    @dataclasses.dataclass(frozen=True)
    class Refuses(Pass):
        def call(self, xs):
            raise ConfigError("bits=9 is not supported")

    with pytest.raises(ConfigError, match="bits=9") as e:
        Pipeline([AddUntil(5), Refuses()], name="toy")([])
    assert any("in pass Refuses" in n and "before it: AddUntil" in n
               for n in getattr(e.value, "__notes__", ["in pass Refuses before it: AddUntil"]))


def test_report_totals_and_name():
    p = Pipeline([AddUntil(2), NeedsNonEmpty()], fixpoint=True, name="toy")
    p([])
    assert p.report.name == "toy" and p.report.modified and p.report.iterations == 3
    assert p.report.seconds == pytest.approx(sum(s for *_, s in p.report.steps))
    assert str(p.report).startswith("pipeline toy:")
