"""Compile targets by name or as a TVM target dict.

    "cpu" (also "host", "llvm")  this machine: LLVM's name for the host CPU as mcpu
                                  (e.g. znver4, sapphirerapids) and the cores this process may
                                  run on as num-cores
    {"kind": "llvm", ...}        a TVM target dict, used as given (mcpu checked against LLVM)
    tvm.target.Target            used as given

TVM 0.27 refuses the old string form ("llvm -mcpu=..."); we say so instead of failing deep
inside TVM. Only CPU (llvm) targets are lowered so far.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tvm
from tvm.target import codegen

from lowbit.errors import ConfigError

__all__ = ["CPU_NAMES", "host_target", "resolve_target"]

CPU_NAMES = ("cpu", "host", "llvm")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """This machine as an LLVM target."""
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(),
                              "num-cores": int(num_cores or _cores())})


def resolve_target(target: Any) -> tvm.target.Target:
    """A ``tvm.target.Target`` for ``target`` (see module docstring); ConfigError otherwise."""
    if isinstance(target, tvm.target.Target):
        t = target
    elif isinstance(target, str):
        if target.strip().lower() in CPU_NAMES:
            return host_target()
        hint = (" (TVM 0.27 takes targets as dicts: {'kind': 'llvm', 'mcpu': 'znver4', "
                "'num-cores': 2})" if " -" in target else "")
        raise ConfigError(f"unknown target {target!r}: give one of {list(CPU_NAMES)} or a TVM "
                          f"target dict{hint}")
    elif isinstance(target, Mapping):
        try:
            t = tvm.target.Target(dict(target))
        except Exception as e:  # TVM raises its own error types
            raise ConfigError(f"invalid TVM target dict {dict(target)!r}: "
                              f"{str(e).strip().splitlines()[0]}") from e
    else:
        raise ConfigError(f"target must be a name, a TVM target dict or a tvm.target.Target, "
                          f"got {type(target).__name__}")
    if t.kind.name != "llvm":
        raise ConfigError(f"target kind {t.kind.name!r} is not supported by lowbit.compile yet "
                          f"(CPU only: kind 'llvm')")
    mcpu = t.attrs.get("mcpu") if hasattr(t, "attrs") else None
    if mcpu and not codegen.llvm_is_valid_cpu(str(mcpu), codegen.llvm_get_system_triple()):
        raise ConfigError(f"target mcpu {str(mcpu)!r} is not a CPU LLVM knows")
    return t
