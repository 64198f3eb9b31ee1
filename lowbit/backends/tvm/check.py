"""Check a scheduled kernel against a reference before trusting it.

A tuned schedule can be fast and wrong (TVM-NOTES.md: the VNNI kernel with a plain-layout
weight). Every schedule taken from the tuning database is run on seeded random inputs and
compared with:

- lowbit kernels: their numpy reference (kernels.REFERENCES, by kind). ``linear_u8s8`` is checked
  twice: once with its real fp32 epilogue (``rtol``), once with ``scale = 1, bias = 0`` where
  the output is the int32 accumulator minus the correction and must match exactly;
- any other kernel: the same PrimFunc built unscheduled (TVM's naive loop nest, i.e. the
  definition): integer outputs exactly, float outputs within ``rtol`` of the largest value.

Errors are reported relative to the largest reference value (integers: absolute).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm

from lowbit.backends.tvm.kernels import (
    KERNEL_ATTR,
    REFERENCES,
    reference_activation,
    reference_linear_u8s8,
    reference_options,
)

__all__ = ["CheckResult", "check_schedule", "random_args", "time_kernels"]

RTOL = 1e-4  # fp32 kernels reassociate sums; 1e-4 of the output range catches any real bug


@dataclasses.dataclass(frozen=True)
class CheckResult:
    ok: bool
    max_err: float
    detail: str


def random_args(func: tvm.tirx.PrimFunc, seed: int = 0) -> list[np.ndarray]:
    """One array per parameter: full-range u8/s8, small ints (safe as indices), N(0,1) floats."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(seed)
    out = []
    for info in ArgInfo.from_prim_func(func):
        shape, dt = [int(s) for s in info.shape], str(info.dtype)
        if dt == "uint8":
            a = rng.integers(0, 256, shape)
        elif dt in ("int8", "int16"):       # int16: pre-widened s8 weights (kernels/isa/madd.py)
            a = rng.integers(-127, 128, shape)
        elif dt == "int32":
            a = rng.integers(-1000, 1000, shape)
        elif dt.startswith(("int", "uint")):
            a = rng.integers(0, 4, shape)
        elif dt == "bool":
            a = rng.integers(0, 2, shape)
        else:
            a = rng.standard_normal(shape)
        out.append(np.asarray(a).astype(dt))
    return out


def _run(func: tvm.tirx.PrimFunc, target, arrays: list[np.ndarray]) -> list[np.ndarray]:
    lib = tvm.compile(func.with_attr("global_symbol", "main"), target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib["main"](*args)
    return [a.numpy() for a in args]


def _compare(got: np.ndarray, ref: np.ndarray, rtol: float) -> tuple[bool, float]:
    """(ok, error): integers exactly (error = max abs difference); floats within ``rtol`` of
    the largest reference value (error = max abs difference / that value)."""
    if got.dtype.kind in "iub":
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
        return bool((diff == 0).all()), float(diff.max(initial=0))
    scale = float(np.abs(ref).max(initial=0.0)) or 1.0
    err = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0)) / scale
    return bool(np.isfinite(got).all() and err <= rtol), err


def check_schedule(original: tvm.tirx.PrimFunc, scheduled: tvm.tirx.PrimFunc, target, *,
                   rtol: float = RTOL, seed: int = 0) -> CheckResult:
    """Run ``scheduled`` against the reference of ``original`` (see module docstring)."""
    arrays = random_args(original, seed)
    kind = str(original.attrs[KERNEL_ATTR]) if KERNEL_ATTR in original.attrs else None
    try:
        got = _run(scheduled, target, arrays)
    except Exception as e:  # noqa: BLE001  (a schedule that does not build is not trusted)
        return CheckResult(False, float("inf"), f"does not build/run: {e}")
    if kind == "linear_u8s8_q":
        return _check_requant(original, scheduled, target, arrays)
    if kind in REFERENCES:
        ref = REFERENCES[kind](*arrays[:-1])
        ok, err = _compare(got[-1], ref, rtol)
        if ok and kind == "linear_u8s8":
            exact = list(arrays)
            exact[3] = np.ones_like(arrays[3])
            exact[4] = np.zeros_like(arrays[4])
            ok_i, err_i = _compare(_run(scheduled, target, exact)[-1].astype(np.int64),
                                   REFERENCES[kind](*exact[:-1]).astype(np.int64), 0.0)
            if not ok_i:
                return CheckResult(False, err_i, "int32 accumulator differs from numpy")
        return CheckResult(ok, err, f"vs numpy reference (max rel err {err:.2g})")
    ref_arrays = _run(original, target, arrays)
    worst = 0.0
    for g, r in zip(got, ref_arrays):
        ok, err = _compare(g, r.astype(np.float64) if r.dtype.kind == "f" else r, rtol)
        worst = max(worst, err)
        if not ok:
            return CheckResult(False, err, f"differs from the unscheduled kernel "
                                           f"(max rel err {err:.2g})")
    return CheckResult(True, worst, f"vs unscheduled kernel (max rel err {worst:.2g})")


REQUANT_TIE_FRACTION = 1e-3  # outputs allowed one step off (rounding ties, fast erf/tanh)


def _check_requant(original, scheduled, target, arrays) -> CheckResult:
    """``linear_u8s8_q``: pick the output grid from the float result so the u8 outputs spread
    over the whole range (random qparams would saturate everything), then compare steps."""
    opts = reference_options(original)
    y = reference_activation(reference_linear_u8s8(*arrays[:5]).astype(np.float64), opts["act"])
    lo, hi = float(y.min()), float(y.max())
    span = (opts["qmax"] - opts["qmin"]) or 1
    inv = span / max(hi - lo, 1e-12)
    arrays = list(arrays)
    arrays[5] = np.array([inv, opts["qmin"] - round(lo * inv)], dtype=np.float32)
    try:
        got = _run(scheduled, target, arrays)[-1].astype(np.int64)
    except Exception as e:  # noqa: BLE001
        return CheckResult(False, float("inf"), f"does not build/run: {e}")
    ref = REFERENCES["linear_u8s8_q"](*arrays[:-1], **opts).astype(np.int64)
    diff = np.abs(got - ref)
    off = float((diff > 0).mean())
    ok = bool(diff.max(initial=0) <= 1 and off <= REQUANT_TIE_FRACTION)
    return CheckResult(ok, float(diff.max(initial=0)),
                       f"vs numpy reference ({off:.2%} of outputs one step off)")


def time_kernels(funcs: list[tvm.tirx.PrimFunc], target, *, repeat: int = 7, number: int = 10,
                 seed: int = 0) -> list[float]:
    """Median seconds per call of each of ``funcs`` (same signature) on the same random
    inputs, timed interleaved so load drift hits all of them alike."""
    arrays = random_args(funcs[0], seed)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    libs = [tvm.compile(f.with_attr("global_symbol", "main"), target) for f in funcs]
    evals = [lib.mod.time_evaluator("main", dev, number=number, repeat=1) for lib in libs]
    for ev in evals:
        ev(*args)  # warm up
    times: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeat):
        for t, ev in zip(times, evals):
            t.append(ev(*args).mean)
    return [float(np.median(t)) for t in times]
