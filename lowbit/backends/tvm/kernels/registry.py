"""The registry of lowbit kernels: kernel kind x TVM target kind -> implementation.

A kernel is a TIR PrimFunc marked with its kind (``KERNEL_ATTR``, set by ``finish``); the
frontends emit it as a plain compute definition (defs.py, peg.py), the same for every target.
What a target makes of it is registered here, once per (kind, target kind)::

    ("linear_u8s8", "llvm")   hand schedule tensorized with the CPU's instruction set (cpu.py, isa/)
    ("linear_u8s8", "cuda")   launch shell around a hand-written device function (cuda.py)

An implementation is ``impl(func, target) -> s_tir.Schedule | None``; None declines (a CPU
without an int8 instruction set, a shape a device function cannot take), and the kernel then
goes to the generic rules of its target (schedules/). ``default_schedule`` looks one up.
Numpy references (check.py) are per kind, target-independent.

Nothing here imports a kernel module: defs.py, cpu.py, peg.py and cuda.py import this one and
register themselves when the package is imported (kernels/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import s_tir, tirx
from tvm.target import Target

__all__ = ["IMPLS", "KERNEL_ATTR", "OPAQUE", "REFERENCES", "default_schedule", "finish",
           "kernel_kind", "reference_options", "register", "register_reference"]

KERNEL_ATTR = "lowbit.kernel"   # PrimFunc attribute: the kernel kind
OPAQUE = 8                      # relax OpPatternKind.kOpaque: FuseOps leaves the kernel whole

Impl = Callable[[tirx.PrimFunc, Target], "s_tir.Schedule | None"]
IMPLS: dict[tuple[str, str], Impl] = {}
REFERENCES: dict[str, Callable] = {}
_REFERENCE_OPTIONS: dict[str, Callable[[tirx.PrimFunc], dict]] = {}


def finish(func: tirx.PrimFunc, kind: str, **attrs) -> tirx.PrimFunc:
    """Mark a kernel: its registry key, opaque to FuseOps, no aliasing, extra attrs."""
    return func.with_attrs({KERNEL_ATTR: kind, "op_pattern": OPAQUE, "tirx.noalias": True,
                            **attrs})


def kernel_kind(func: tirx.PrimFunc) -> str | None:
    return str(func.attrs[KERNEL_ATTR]) if KERNEL_ATTR in func.attrs else None


def register(kind: str, target_kind: str, impl: Impl) -> None:
    """Add the implementation of kernel ``kind`` on TVM targets of kind ``target_kind``."""
    IMPLS[(kind, target_kind)] = impl


def register_reference(kind: str, reference: Callable,
                       options: Callable[[tirx.PrimFunc], dict] | None = None) -> None:
    """Add the numpy reference of ``kind`` (check.py), and how to read its keyword options
    from a kernel's attributes."""
    REFERENCES[kind] = reference
    if options is not None:
        _REFERENCE_OPTIONS[kind] = options


def reference_options(func: tirx.PrimFunc) -> dict:
    """Keyword arguments of a kernel's numpy reference, read from the kernel's attributes."""
    options = _REFERENCE_OPTIONS.get(kernel_kind(func))
    return options(func) if options is not None else {}


def default_schedule(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
    """The registered schedule of a lowbit kernel for ``target``: None if the kernel is not
    ours, no implementation is registered for the target's kind, or the implementation
    declines (e.g. int8 kernels on a CPU without a registered instruction set)."""
    impl = IMPLS.get((kernel_kind(func), target.kind.name))
    return None if impl is None else impl(func, target)
