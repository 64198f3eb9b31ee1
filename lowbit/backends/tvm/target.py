"""Compile targets by name or as a TVM target dict.

    "cpu" (also "host", "llvm")  this machine: LLVM's name for the host CPU as mcpu
                                  (e.g. znver4, sapphirerapids), corrected by the features the
                                  host really has (``mattr``: a VM may hide AVX-512 from a
                                  Zen 4), and the cores this process may run on as num-cores
    "x86-64-v3", "znver3", ...    an LLVM CPU name: that CPU, built here whatever the host
    "cuda" (also "gpu")          an NVIDIA GPU, sm_90 (H100) by default
    {"kind": "llvm", ...}        a TVM target dict, used as given (mcpu checked against LLVM)
    {"kind": "cuda", "arch": "sm_80"}   a GPU target dict: arch defaults to sm_90, the host
                                  part to generic x86-64 LLVM (the host code must run on the
                                  GPU machine's CPU, not only on this one)
    tvm.target.Target            used as given

TVM 0.27 refuses the old string form ("llvm -mcpu=..."); we say so instead of failing deep
inside TVM. CUDA targets build on machines without a GPU (pipelines/cuda.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tvm
from tvm.target import codegen

from lowbit.errors import ConfigError

__all__ = ["CPU_NAMES", "CUDA_ARCH", "CUDA_NAMES", "cuda_target", "host_target", "is_cuda",
           "resolve_target"]

CPU_NAMES = ("cpu", "host", "llvm")
CUDA_NAMES = ("cuda", "gpu")
CUDA_ARCH = "sm_90"
_CUDA_DEFAULTS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
                  "thread_warp_size": 32}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# cpuinfo flag -> LLVM feature, for the features that decide which kernels a target gets
# (kernels/isa/): where the host's flags and LLVM's idea of its mcpu disagree, the flags win
_HOST_FEATURES = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
                  "avx512vl": "avx512vl", "avx512_vnni": "avx512vnni", "avx_vnni": "avxvnni"}


def host_mattr(mcpu: str) -> list[str]:
    """``mattr`` entries that make LLVM's ``mcpu`` agree with this host's cpuinfo flags:
    "-avx512f" where the model has AVX-512 but the (virtual) machine does not show it,
    "+avxvnni" where the host has a feature LLVM does not know for that model."""
    from lowbit.hostcpu import host_x86_features

    flags = host_x86_features()
    if not flags:  # not Linux / unreadable: trust LLVM's host detection
        return []
    probe = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    out = []
    for flag, feature in _HOST_FEATURES.items():
        try:
            llvm_has = bool(codegen.target_has_features(feature, probe))
        except Exception:  # noqa: BLE001, S112  (LLVM without that feature name)
            continue
        if llvm_has and flag not in flags:
            out.append(f"-{feature}")
        elif flag in flags and not llvm_has:
            out.append(f"+{feature}")
    return out


def required_cpu_flags(target: tvm.target.Target) -> list[str]:
    """The cpuinfo flags (of those tracked above) that code built for an LLVM ``target`` may
    use: a host lacking one would die with SIGILL running it (runtime.py checks first)."""
    if target.kind.name != "llvm":
        return []
    out = []
    for flag, feature in _HOST_FEATURES.items():
        try:
            if codegen.target_has_features(feature, target):
                out.append(flag)
        except Exception:  # noqa: BLE001, S112  (LLVM without that feature name)
            continue
    return out


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """This machine as an LLVM target: its CPU name, its real features, its cores."""
    mcpu = codegen.llvm_get_system_cpu()
    spec = {"kind": "llvm", "mcpu": mcpu, "num-cores": int(num_cores or _cores())}
    mattr = host_mattr(mcpu)
    if mattr:
        spec["mattr"] = mattr
    return tvm.target.Target(spec)


def cuda_target(arch: str = CUDA_ARCH, **attrs: Any) -> tvm.target.Target:
    """An NVIDIA GPU target (``arch`` like "sm_90") with a generic x86-64 host."""
    if not (isinstance(arch, str) and arch.startswith("sm_") and arch[3:].rstrip("a").isdigit()):
        raise ConfigError(f"CUDA arch must look like 'sm_90' or 'sm_90a', got {arch!r}")
    host = attrs.pop("host", None) or {"kind": "llvm"}
    return tvm.target.Target(dict(_CUDA_DEFAULTS, kind="cuda", arch=arch, **attrs), host=host)


def is_cuda(target: tvm.target.Target) -> bool:
    return target.kind.name == "cuda"


def resolve_target(target: Any) -> tvm.target.Target:
    """A ``tvm.target.Target`` for ``target`` (see module docstring); ConfigError otherwise."""
    if isinstance(target, tvm.target.Target):
        t = target
    elif isinstance(target, str):
        if target.strip().lower() in CPU_NAMES:
            return host_target()
        if target.strip().lower() in CUDA_NAMES:
            return cuda_target()
        if target.strip() and codegen.llvm_is_valid_cpu(target.strip(),
                                                        codegen.llvm_get_system_triple()):
            return tvm.target.Target({"kind": "llvm", "mcpu": target.strip(),
                                      "num-cores": _cores()})
        hint = (" (TVM 0.27 takes targets as dicts: {'kind': 'llvm', 'mcpu': 'znver4', "
                "'num-cores': 2})" if " -" in target else "")
        raise ConfigError(f"unknown target {target!r}: give one of "
                          f"{list(CPU_NAMES + CUDA_NAMES)} or a TVM "
                          f"target dict{hint}")
    elif isinstance(target, Mapping) and dict(target).get("kind") == "cuda":
        attrs = {k: v for k, v in dict(target).items() if k != "kind"}
        try:
            return cuda_target(attrs.pop("arch", CUDA_ARCH), **attrs)
        except ConfigError:
            raise
        except Exception as e:  # TVM raises its own error types
            raise ConfigError(f"invalid TVM target dict {dict(target)!r}: "
                              f"{str(e).strip().splitlines()[0]}") from e
    elif isinstance(target, Mapping):
        try:
            t = tvm.target.Target(dict(target))
        except Exception as e:  # TVM raises its own error types
            raise ConfigError(f"invalid TVM target dict {dict(target)!r}: "
                              f"{str(e).strip().splitlines()[0]}") from e
    else:
        raise ConfigError(f"target must be a name, a TVM target dict or a tvm.target.Target, "
                          f"got {type(target).__name__}")
    if t.kind.name == "cuda":
        if t.host is None:
            t = tvm.target.Target(t, host={"kind": "llvm"})
        return t
    if t.kind.name != "llvm":
        raise ConfigError(f"target kind {t.kind.name!r} is not supported by lowbit.compile "
                          f"(kinds 'llvm' and 'cuda')")
    mcpu = t.attrs.get("mcpu") if hasattr(t, "attrs") else None
    if mcpu and not codegen.llvm_is_valid_cpu(str(mcpu), codegen.llvm_get_system_triple()):
        raise ConfigError(f"target mcpu {str(mcpu)!r} is not a CPU LLVM knows")
    return t
