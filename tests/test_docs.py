"""Every ```python block in README.md and docs/*.md runs. Blocks of one file share a
namespace and run in order, as a reader would paste them."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(encoding="utf-8"), re.S)


def _needs(md: Path) -> list[str]:
    """The real models a file's examples load (lowbit.models.DOWNLOADS names)."""
    text = "".join(_blocks(md))
    return [name for name, call in (("minilm", "load_minilm"), ("gemma", "load_gemma"))
            if call in text]


@pytest.mark.parametrize("md", [f for f in FILES if _blocks(f)], ids=lambda p: p.name)
def test_doc_examples_run(md, tmp_path, monkeypatch):
    from lowbit.models.downloads import skip_reason

    for name in _needs(md):
        if reason := skip_reason(name):
            pytest.skip(reason)
    monkeypatch.chdir(tmp_path)  # examples write their files here
    namespace = {"__name__": "__doc_example__"}
    for i, code in enumerate(_blocks(md)):
        exec(compile(code, f"{md.name}[block {i}]", "exec"), namespace)
