"""Labelled text files: ``text<TAB>label`` under a header, as GLUE's SST-2 is written.

    text<TAB>label                          <- header: columns by name, in either order
    it 's a charming and often affecting journey . <TAB>1
    unflinchingly bleak and desperate <TAB>0

The text column may be called ``text`` or ``sentence`` (GLUE's own name); other columns are
ignored. Labels are integers (class indices). Quotes are text, not quoting (SST-2 holds
``"`` and ``'`` freely), and a line is split on tabs only. Anything else is refused with a
``ConfigError`` naming the file and the line (1-based, the header is line 1).
"""

from __future__ import annotations

from pathlib import Path

from lowbit.errors import ConfigError

__all__ = ["read_labelled"]

TEXT_COLUMNS = ("text", "sentence")


def read_labelled(path: str | Path, limit: int | None = None, *, what: str = "--tsv"
                  ) -> tuple[list[str], list[int]]:
    """``(texts, labels)`` of the first ``limit`` rows (all when None) of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {e.start})") from e
    if not lines or not lines[0].strip():
        raise ConfigError(f"{what} {path}: empty; expected a header line 'text<TAB>label' "
                          f"and then one example per line")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    if text_col is None or "label" not in header:
        raise ConfigError(f"{what} {path} line 1: the header {lines[0].strip()!r} needs a "
                          f"'text' (or 'sentence') and a 'label' column, separated by a tab")
    label_col = header.index("label")
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        if limit is not None and len(texts) >= limit:
            break
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ConfigError(f"{what} {path} line {number}: {len(fields)} tab-separated "
                              f"field(s), the header has {len(header)} "
                              f"({', '.join(header)})")
        text, label = fields[text_col].strip(), fields[label_col].strip()
        try:
            labels.append(int(label))
        except ValueError:
            raise ConfigError(f"{what} {path} line {number}: label {label!r} is not an "
                              f"integer class index") from None
        if not text:
            raise ConfigError(f"{what} {path} line {number}: empty text")
        texts.append(text)
    if not texts:
        raise ConfigError(f"{what} {path}: a header and no examples")
    return texts, labels
