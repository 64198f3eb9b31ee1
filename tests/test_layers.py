"""The layering of DESIGN.md ("Architecture") holds: quant/ knows no graph, passes know no
backend, FX and ONNX passes never import each other, config knows no pass.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them (CI runs only
the test suite), so a violation fails here with import-linter's report of the import chain.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINT = ("import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())")


def test_import_contracts_hold():
    done = subprocess.run([sys.executable, "-c", _LINT, "--no-cache", "pyproject.toml"],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"import contracts broken:\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout, done.stdout


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_quant_imports_no_torch_fx():
    """import-linter sees external packages only whole (``torch``), so this one is checked
    here: quant/ works on tensors, never on a graph."""
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imported(p)
                                                    if n == "torch.fx" or n.startswith("torch.fx."))
                 for p in sorted((ROOT / "lowbit" / "quant").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}, offenders
