"""Comparing outputs: element-wise equivalence and SQNR.

``assert_equivalent(before, after, inputs, rtol=, atol=)`` compares every output element-wise,
``before`` being the reference::

    |after - before| <= atol + rtol * |before|      (NaN must sit where NaN sits)

``sqnr`` / ``assert_sqnr`` measure ``10 * log10(sum(ref^2) / sum((ref - test)^2))`` in dB, the
floor that fake-quant graphs are held to. Tolerances are always the caller's: nothing here has a
default tolerance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from lowbit.errors import ConfigError, VerifyError
from lowbit.testing.inputs import make_inputs, specs_of
from lowbit.testing.run import Outputs, clone, runner, to_numpy

__all__ = ["EquivalenceReport", "OutputStats", "assert_equivalent", "assert_sqnr", "compare",
           "sqnr"]

_WORST_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class OutputStats:
    """Element-wise comparison of one output, ``after`` against the reference ``before``.

    ``worst`` holds up to five ``(index, before, after)``: mismatched elements first, then by
    absolute error. ``max_rel_err`` is inf where ``before`` is 0 and ``after`` is not.
    """

    name: str
    shape: tuple[int, ...]
    after_shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    mismatched: int
    worst: tuple[tuple[tuple[int, ...], float, float], ...]
    input_set: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def passed(self) -> bool:
        return self.shape == self.after_shape and self.mismatched == 0

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0

    def __str__(self) -> str:
        if self.shape != self.after_shape:
            return f"{self.name}: shape {self.shape} before, {self.after_shape} after  FAIL"
        head = (f"{self.name}: shape {self.shape}  max abs err {self.max_abs_err:.3g}  "
                f"max rel err {self.max_rel_err:.3g}  mismatched {self.mismatched}/{self.numel} "
                f"({100 * self.mismatch_fraction:.3g}%)  {'ok' if self.passed else 'FAIL'}")
        if self.passed:
            return head
        rows = [f"      {list(i)}: before {b:.8g}  after {a:.8g}  (abs err {abs(a - b):.3g})"
                for i, b, a in self.worst]
        return "\n".join([head, "    worst elements:", *rows])


def compare(before: Any, after: Any, *, rtol: float, atol: float, name: str = "output",
            input_set: int = 0) -> OutputStats:
    """Compare two arrays/tensors: ``|after - before| <= atol + rtol * |before|``, NaN == NaN."""
    ref, test = _as_float64(before), _as_float64(after)
    if ref.shape != test.shape:
        return OutputStats(name, ref.shape, test.shape, math.inf, math.inf, ref.size, (), input_set)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same = (test == ref) | (np.isnan(test) & np.isnan(ref))
        err = np.where(same, 0.0, np.abs(test - ref))
        err[np.isnan(err)] = np.inf  # NaN on one side only
        bad = ~same & ~(np.isfinite(err) & (err <= atol + rtol * np.abs(ref)))
        rel = np.where(err == 0, 0.0, err / np.abs(ref))
    rel[np.isnan(rel)] = np.inf
    worst = tuple((tuple(int(i) for i in np.unravel_index(k, ref.shape)),
                   float(ref.flat[k]), float(test.flat[k])) for k in _worst(err, bad))
    return OutputStats(name, ref.shape, test.shape, float(err.max(initial=0.0)),
                       float(rel.max(initial=0.0)), int(bad.sum()), worst, input_set)


def _as_float64(x: Any) -> np.ndarray:
    return to_numpy(x).astype(np.float64)


def _worst(err: np.ndarray, bad: np.ndarray) -> np.ndarray:
    pool = np.flatnonzero(bad) if bad.any() else np.arange(err.size)
    if pool.size > _WORST_SHOWN:
        pool = pool[np.argpartition(-err.flat[pool], _WORST_SHOWN - 1)[:_WORST_SHOWN]]
    return pool[np.argsort(-err.flat[pool], kind="stable")]


@dataclasses.dataclass(frozen=True)
class EquivalenceReport:
    """Per-output statistics of one ``assert_equivalent`` call (``seeds``: None when the
    caller gave the inputs)."""

    rtol: float
    atol: float
    outputs: tuple[OutputStats, ...]
    seeds: tuple[int, ...] | None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __str__(self) -> str:
        source = "given inputs" if self.seeds is None else f"random inputs, seeds {list(self.seeds)}"
        head = (f"{len(self.outputs)} output(s), |after - before| <= atol + rtol * |before| "
                f"(rtol={self.rtol:g}, atol={self.atol:g}), {source}:")
        several = self.seeds is not None and len(self.seeds) > 1
        rows = [f"  {f'[input set {o.input_set}] ' if several else ''}{o}" for o in self.outputs]
        return "\n".join([head, *rows])


def assert_equivalent(before: Any, after: Any, inputs: Any = None, *, rtol: float, atol: float,
                      seed: int = 0, num_inputs: int = 1) -> EquivalenceReport:
    """Assert that ``after`` computes what ``before`` computes, on every output.

    Args:
        before, after: modules, GraphModules, callables or ONNX models (``before`` is the
            reference); modules are deep-copied first.
        inputs: a tensor, a tuple of positional inputs or a dict by name; None generates
            ``num_inputs`` seeded sets (seeds ``seed, seed + 1, ...``) from input metadata.
        rtol, atol: required; see the module docstring for the rule.

    Raises:
        AssertionError: an output differs; the message reports every output and the worst
            elements of each failing one.
        VerifyError: a model cannot be run, or inputs cannot be generated or fed.
    """
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    if num_inputs < 1 or (inputs is not None and num_inputs != 1):
        raise ConfigError(f"num_inputs={num_inputs}: must be >= 1, and 1 when inputs are given")
    run_before, run_after = runner(clone(before)), runner(clone(after))
    seeds = None if inputs is not None else tuple(range(seed, seed + num_inputs))
    if seeds is None:
        sets = [inputs]
    else:
        specs = specs_of(before, after)
        sets = [make_inputs(specs, seed=s) for s in seeds]
    stats = []
    for i, x in enumerate(sets):
        pairs = _pair_outputs(run_before(x), run_after(x))
        stats += [compare(b, a, rtol=rtol, atol=atol, name=n, input_set=i) for n, b, a in pairs]
    report = EquivalenceReport(rtol, atol, tuple(stats), seeds)
    if not report.passed:
        raise AssertionError(f"outputs differ: {report}")
    return report


def _check_tolerance(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _pair_outputs(before: Outputs, after: Outputs) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if len(before) != len(after):
        raise AssertionError(f"before has {len(before)} output(s) {[n for n, _ in before]}, "
                             f"after has {len(after)} {[n for n, _ in after]}")
    return [(nb if nb == na else f"{nb} / {na}", b, a)
            for (nb, b), (na, a) in zip(before, after)]


def sqnr(reference: Any, test: Any) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 * log10(sum(ref^2) / sum((ref-test)^2))``.

    +inf when identical, -inf when the reference is all zeros and the test is not, NaN when
    either holds a NaN.
    """
    ref, tst = _as_float64(reference), _as_float64(test)
    if ref.shape != tst.shape:
        raise VerifyError(f"sqnr: shapes differ: reference {ref.shape}, test {tst.shape}")
    noise = float(np.sum((ref - tst) ** 2))
    if noise == 0.0:
        return math.inf
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(np.sum(ref ** 2) / noise))


def assert_sqnr(reference_module: Any, test_module: Any, inputs: Any,
                min_db: float) -> dict[str, float]:
    """Assert every output of ``test_module`` is within ``min_db`` dB SQNR of the reference.

    ``inputs=None`` generates seed-0 inputs from metadata. Returns the SQNR of each output.
    """
    run_ref, run_test = runner(clone(reference_module)), runner(clone(test_module))
    if inputs is None:
        inputs = make_inputs(specs_of(reference_module, test_module), seed=0)
    pairs = _pair_outputs(run_ref(inputs), run_test(inputs))
    dbs = {name: sqnr(r, t) for name, r, t in pairs}
    if all(db >= min_db for db in dbs.values()):
        return dbs
    rows = [f"  {name}: shape {r.shape}  SQNR {dbs[name]:.2f} dB  "
            f"{'ok' if dbs[name] >= min_db else 'FAIL'}" for name, r, _ in pairs]
    raise AssertionError("\n".join([f"SQNR below {min_db} dB:", *rows]))
