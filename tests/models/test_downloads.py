"""The download table: announcements name size and cache path, LOWBIT_SKIP_DOWNLOADS skips only
what is not cached, and wheels are deleted only from the cache's own wheels folder."""

from __future__ import annotations

import pytest

from lowbit.models import downloads as D


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWBIT_SKIP_DOWNLOADS", raising=False)
    for d in D.DOWNLOADS.values():
        monkeypatch.delenv(d.override, raising=False)
    return tmp_path / "cache"


def test_announce_names_size_path_and_switches(cache, capsys):
    D.announce("minilm")
    err = capsys.readouterr().err
    assert "83.5 MB" in err and str(cache / "all-MiniLM-L6-v2") in err
    assert "LOWBIT_CACHE" in err and "LOWBIT_MINILM_DIR" in err


def test_skip_reason_only_when_asked_and_not_cached(cache, monkeypatch):
    assert D.skip_reason("gemma") is None                       # not asked: download
    monkeypatch.setenv("LOWBIT_SKIP_DOWNLOADS", "1")
    reason = D.skip_reason("gemma")
    assert "238.2 MB" in reason and "gemma-3-270m" in reason
    folder = cache / "gemma-3-270m"
    folder.mkdir(parents=True)
    (folder / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"x")
    assert D.skip_reason("gemma") is None                       # cached: runs
    monkeypatch.setenv("LOWBIT_MINILM_DIR", str(cache))
    assert D.skip_reason("minilm") is None                      # a copy given: runs


def test_discard_wheels_only_in_cache_wheels_folder(cache, tmp_path):
    own = cache / "wheels"
    own.mkdir(parents=True)
    mine, yours = own / "a-1.0-py3-none-any.whl", tmp_path / "b-1.0-py3-none-any.whl"
    mine.write_bytes(b"a")
    yours.write_bytes(b"b")
    D.discard_wheels([mine, yours])
    assert not mine.exists() and yours.exists()
