"""lowbit.hostcpu: the host's x86 feature flags from /proc/cpuinfo, empty where unknown."""

import platform

import pytest

from lowbit import hostcpu

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 ssse3 sse4_2 avx avx2 fma bmi2
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 something_else
"""


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Point hostcpu at a file of our own; the cache is cleared before and after."""
    monkeypatch.delenv(hostcpu.ENV, raising=False)

    def use(text: str | None):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(hostcpu, "CPUINFO", path)
        hostcpu.host_x86_features.cache_clear()
        return hostcpu.host_x86_features()

    yield use
    hostcpu.host_x86_features.cache_clear()


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"},
                    reason="reads x86 flags")
def test_flags_of_the_first_processor(cpuinfo):
    flags = cpuinfo(CPUINFO)
    assert flags == frozenset({"fpu", "sse2", "ssse3", "sse4_2", "avx", "avx2", "fma", "bmi2"})
    assert hostcpu.host_x86_features() is flags                   # read once


def test_unknown_is_empty(cpuinfo, monkeypatch):
    assert cpuinfo(None) == frozenset()                           # no such file
    assert cpuinfo("processor\t: 0\nmodel name\t: x\n") == frozenset()   # no flags line
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpuinfo(CPUINFO) == frozenset()                        # not x86


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="this host's /proc/cpuinfo")
def test_this_host():
    flags = hostcpu.host_x86_features()
    assert isinstance(flags, frozenset) and {"sse2", "fxsr"} <= flags    # every x86-64


def test_flags_from_the_environment(cpuinfo, monkeypatch):
    """An emulator shows the host's file; the user names the emulated CPU's flags instead."""
    monkeypatch.setenv(hostcpu.ENV, "avx avx2,fma")
    assert cpuinfo(CPUINFO) == frozenset({"avx", "avx2", "fma"})
