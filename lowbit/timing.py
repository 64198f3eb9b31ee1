"""Latency measurement shared by ``lowbit demo`` and the benchmarks: warm up, then time each
call; report the median (robust to a neighbour's load spikes) and the minimum."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

__all__ = ["Latency", "available_cores", "load_average", "measure", "time_onnxruntime"]


@dataclasses.dataclass(frozen=True)
class Latency:
    median_ms: float
    min_ms: float
    iters: int

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms (min {self.min_ms:.2f}, {self.iters} runs)"


def measure(fn: Callable[[], object], iters: int = 30, warmup: int = 5) -> Latency:
    """Median and minimum wall time of ``fn()`` over ``iters`` calls after ``warmup`` calls."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"measure needs iters >= 1 and warmup >= 0, got {iters}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return Latency(times[len(times) // 2] * 1e3, times[0] * 1e3, iters)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def time_onnxruntime(path, threads: int, inputs: dict, iters: int, warmup: int = 5) -> Latency:
    """onnxruntime's latency on ``inputs``; its session (whose worker threads spin after each
    run and would slow the next engine timed in this process) is released before returning."""
    import gc

    latency = _time_session(path, threads, inputs, iters, warmup)
    gc.collect()                                   # the session died with _time_session
    return latency


def _time_session(path, threads: int, inputs: dict, iters: int, warmup: int) -> Latency:
    from lowbit.backends.onnxruntime import OrtRunner

    runner = OrtRunner(path, threads=threads)
    return measure(lambda: runner.run(inputs), iters, warmup)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not say): printed next to timings
    because a busy neighbour moves every number on a shared machine."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
