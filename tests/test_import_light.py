"""``import lowbit`` stays light: no TVM, onnxruntime, ONNX or transformers until a function
that needs them runs (issue 19: a CLI start, a user's import, pay only for what they use)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tvm", "tvm_ffi", "onnxruntime", "onnx", "onnx_ir", "onnxscript", "transformers",
         "matplotlib", "tensorly", "highspy", "xgboost")


def _loaded_after(code: str) -> set[str]:
    probe = (f"import sys, json; {code}; "
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd="/")
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_lowbit_loads_no_heavy_package():
    assert _loaded_after("import lowbit") == set()


def test_cli_help_loads_no_heavy_package():
    """``lowbit --help`` builds the parser without importing any verb's module."""
    assert _loaded_after("from lowbit.cli import build_parser; build_parser([])") == set()


def test_heavy_package_loads_when_used():
    """The probe can fail: asking for the ONNX loader brings onnx_ir in."""
    assert "onnx_ir" in _loaded_after("import lowbit.passes.onnx.load")
