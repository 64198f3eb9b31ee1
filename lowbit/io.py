"""File writing shared by every layer: atomic text writes (a temporary sibling, then
``os.replace``) and folder swaps, so an interrupted write never leaves a half-written file or
folder; ``read_json`` for the saved plans and tables (a ConfigError naming the file)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from lowbit.errors import ConfigError

__all__ = ["read_json", "replace_folder", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike, who: str, what: str = "a plan"):
    """The JSON value in ``path``; an unreadable or malformed file is a ConfigError: ``who``:
    cannot read ``what`` from ``path``, and why."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{who}: cannot read {what} from {path}: {e}") from None


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the filled temporary folder ``tmp`` (a sibling of ``folder``) in ``folder``'s place:
    an existing folder is renamed aside first and deleted only once the new one is in place."""
    tmp.chmod(0o755)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
