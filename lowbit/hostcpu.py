"""The host CPU's x86 feature flags, for the choices and test bounds that depend on the hardware.

    host_x86_features() -> frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni", ...})

The names are the ``flags`` of Linux's ``/proc/cpuinfo`` (``avx2``, ``avx512f``, ``avx512bw``,
``avx512_vnni``, ``avx_vnni``, ``amx_int8``, ...), read once per process. Where there is no such
file to read (another OS, another architecture, an unreadable file) the set is empty, which
callers read as "unknown": assume the least of the host.

What the file can miss: a user-mode emulator (``qemu-x86_64 -cpu EPYC-Milan``) shows the host's
``/proc/cpuinfo`` to a program whose CPUID says otherwise, so a library that reads CPUID itself
(onnxruntime's MLAS, torch) may pick kernels for another CPU than these flags name. Set
``LOWBIT_CPU_FLAGS`` to the emulated CPU's flags there (``LOWBIT_CPU_FLAGS="avx avx2 fma"``,
spaces or commas): it replaces the file's flags for lowbit's choices (the host target's
``mattr``, which kernels a module may run, which test bounds apply).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

__all__ = ["host_x86_features"]

CPUINFO = Path("/proc/cpuinfo")
ENV = "LOWBIT_CPU_FLAGS"
_X86 = {"x86_64", "amd64", "i386", "i686"}


@functools.cache
def host_x86_features() -> frozenset[str]:
    """The host's x86 feature flags as Linux names them; empty where unknown (not Linux, not
    x86), or those ``$LOWBIT_CPU_FLAGS`` names. Read once: ``host_x86_features.cache_clear()``
    reads again."""
    override = os.environ.get(ENV)
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    if platform.machine().lower() not in _X86:
        return frozenset()
    try:
        text = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    return _cpuinfo_flags(text)


def _cpuinfo_flags(text: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a ``/proc/cpuinfo`` text (Linux lists the same
    flags for every core, hybrid CPUs included)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
