"""Tuning by register tile: the integer kernels of pair-form instruction sets (isa/madd.py).

MetaSchedule cannot tensorize ``vpmaddwd``'s pair sums (the kernel's reduction has to be
factored first, which its search space does not do), so for AVX2 and AVX-512BW targets the
u8 x s8 kernels are tuned by timing the hand schedule (kernels/cpu.py, peg.py) at every
register tile ``MI x NT*16`` of the instruction set's preferences that divides the kernel and
fits the register file (int16 weights, what compiled modules use on these targets, leave more
registers to accumulators than s8 ones: ``REG_BUDGET``), side by side on the same inputs
(check.time_kernels), and keeping the fastest::

    tile = argmin_{(mi, nt) in prefs, mi | M, nt | N/16, mi * nt * regs <= budget} t(mi, nt)

Records: ``<db>/tiles/<target key>.json`` mapping the kernel's structural hash to
``{"mi", "nt", "ms"}``, written atomically; they are judged (reference check, timed against
the default tile) like MetaSchedule records (tune.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import tvm
import tvm_ffi
from tvm import s_tir

from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.kernels.defs import weight_dtype
from lowbit.backends.tvm.kernels.isa import Isa, isa_of

__all__ = ["TileRecords", "applies", "candidates", "scheduled", "search"]

# (accumulator registers a tile may take, registers per 16-column block of accumulators) by
# instruction set and weight dtype: 16 ymm / 32 zmm, minus a broadcast and a product, and for
# s8 weights the widened copies of the tile's column blocks (int16 weights, what compiled
# modules use, are read from memory). A 16-column block of pair sums is 32 int32: 4 ymm (AVX2)
# or 2 zmm (AVX-512BW); beyond these budgets LLVM spills (seen in the asm).
REG_BUDGET = {("avx2", "int8"): (8, 4), ("avx2", "int16"): (12, 4),
              ("avx512bw", "int8"): (24, 2), ("avx512bw", "int16"): (28, 2)}


def applies(func: tvm.tirx.PrimFunc, target) -> bool:
    """Whether ``func`` is a u8 x s8 kernel on a pair-form target (tuned here)."""
    if target.kind.name != "llvm" or kernels.kernel_kind(func) not in kernels.INT8_KINDS:
        return False
    isa = isa_of(target)
    return isa is not None and isa.pairs


def _extents(func: tvm.tirx.PrimFunc) -> tuple[int, int]:
    """(M, N padded to 16) of a u8 x s8 kernel, from its x [M, K] and packed weight."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    x, w = ArgInfo.from_prim_func(func)[:2]
    return int(x.shape[0]), int(w.shape[0]) * 16


def candidates(func: tvm.tirx.PrimFunc, isa: Isa) -> list[tuple[int, int]]:
    m, n_pad = _extents(func)
    budget, per_block = REG_BUDGET.get((isa.name, weight_dtype(func)), (12, 4))
    return [(mi, nt) for mi in isa.mi_prefs for nt in isa.nt_prefs
            if m % mi == 0 and (n_pad // 16) % nt == 0 and mi * nt * per_block <= budget]


def scheduled(func: tvm.tirx.PrimFunc, target, mi: int, nt: int) -> tvm.tirx.PrimFunc:
    """``func`` under its hand schedule with register tile ``mi x nt*16``."""
    isa = dataclasses.replace(isa_of(target), mi_prefs=(mi,), nt_prefs=(nt,))
    sch = kernels.SCHEDULES[kernels.kernel_kind(func)](s_tir.Schedule(func), isa)
    return sch.mod["main"]


class TileRecords:
    """One target's tile records (module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.records: dict = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:   # written atomically, but maybe edited by hand
            self.records = {}

    @staticmethod
    def _key(func) -> str:
        return f"{tvm_ffi.structural_hash(func.without_attr('global_symbol')):x}"

    def get(self, func) -> tuple[int, int] | None:
        rec = self.records.get(self._key(func))
        return None if rec is None else (int(rec["mi"]), int(rec["nt"]))

    def put(self, func, mi: int, nt: int, ms: float) -> None:
        self.records[self._key(func)] = {"mi": mi, "nt": nt, "ms": ms}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.records, indent=1))
        os.replace(tmp, self.path)


def search(func: tvm.tirx.PrimFunc, target, records: TileRecords) -> str:
    """Time every candidate tile of ``func``, record the fastest; returns a summary."""
    from lowbit.backends.tvm.check import time_kernels

    tiles = candidates(func, isa_of(target))
    if not tiles:
        return "no tile fits"
    funcs = [scheduled(func, target, mi, nt) for mi, nt in tiles]
    times = time_kernels(funcs, target) if len(funcs) > 1 else [float("nan")]
    best = min(range(len(tiles)), key=lambda i: times[i] if times[i] == times[i] else 0.0)
    records.put(func, *tiles[best], times[best] * 1e3)
    return (f"best tile {tiles[best][0]}x{tiles[best][1] * 16} "
            f"{times[best] * 1e3:.4f} ms of {len(tiles)} tile(s)")
