"""The registry of instruction sets for the CPU integer kernels: kernel kinds x ISAs.

    base.py    ``Isa``: what one instruction set contributes (block product, tile sizes)
    dot4.py    AVX512_VNNI (vpdpbusd zmm), AVX_VNNI (vpdpbusd ymm)        dot form
    madd.py    AVX512BW (vpmaddwd zmm), AVX2 (vpmaddwd ymm), exact           pair form

Every CPU integer kernel kind (``linear_u8s8``, ``linear_u8s8_q``, ``linear_u8s8_peg``) is
written once over an ``Isa`` (cpu.py, peg.py): the weight layout
``[N/16, K/4, 16, 4]`` is the same for all of them, so a lowered graph does not depend on the
instruction set; only the compiled kernel does. A target gets the first entry of ``ISAS`` whose
features it has (``isa_of``). Adding an instruction set (aarch64 ``sdot`` / ``i8mm`` next) is
one file with its block intrinsic and one entry here.

W4A16 kernels are fp32 FMA code that LLVM vectorizes for any target; they need no entry.
"""

from __future__ import annotations

from lowbit.backends.tvm.kernels.isa.base import Isa
from lowbit.backends.tvm.kernels.isa.dot4 import AVX512_VNNI, AVX_VNNI
from lowbit.backends.tvm.kernels.isa.madd import AVX2, AVX512BW

__all__ = ["ISAS", "Isa", "by_name", "example_target", "host_runs", "isa_of",
           "target_features"]

ISAS: tuple[Isa, ...] = (AVX512_VNNI, AVX_VNNI, AVX512BW, AVX2)
"""Preference order: the first whose features a target has is its integer kernel family."""

FEATURES = tuple(sorted({f for isa in ISAS for f in isa.features}))


def target_features(target) -> frozenset[str]:
    """The LLVM features among those the registry asks about that ``target`` has (its mcpu's
    features with its mattr applied); empty for non-LLVM targets or an unknown mcpu."""
    if target.kind.name != "llvm":
        return frozenset()
    from tvm.target.codegen import target_has_features

    out = set()
    for f in FEATURES:
        try:
            if target_has_features(f, target):
                out.add(f)
        except Exception:  # noqa: BLE001, S112  (an mcpu LLVM does not know: no features)
            continue
    return frozenset(out)


def isa_of(target) -> Isa | None:
    """The integer-kernel instruction set of an LLVM ``target`` (None: not x86 with AVX2 at
    least, or not an LLVM target)."""
    have = target_features(target)
    return next((isa for isa in ISAS if set(isa.features) <= have), None)


def by_name(name: str) -> Isa:
    """The registry entry called ``name`` ("avx2", ...); KeyError names the known ones."""
    for isa in ISAS:
        if isa.name == name:
            return isa
    raise KeyError(f"unknown instruction set {name!r}: one of {[i.name for i in ISAS]}")


def example_target(isa: Isa, num_cores: int = 2):
    """An LLVM target whose integer kernels are ``isa``'s (its ``example_mcpu``)."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": isa.example_mcpu, "num-cores": num_cores})


def host_runs(target) -> bool:
    """Whether this machine can run code built for ``target``: every registry feature the
    target has, the host has (code for a feature the host lacks dies with SIGILL)."""
    from lowbit.backends.tvm.target import host_target

    return target_features(target) <= target_features(host_target())
