"""``lowbit report``: an HTML page with PNG plots of what quantization does to a model.

MODEL is a Hugging Face folder (quantized here as ``lowbit quantize`` does it: ``--recipe``,
default W8A8, on the calibration text) or a QDQ ONNX file (``lowbit quantize``'s, reported as
it is). The page (lowbit/report/) shows:

    activation ranges  each linear input's per-channel [min, max] on the calibration text,
                       outlier channels (beyond 6x the median channel) in red, and the
                       range the activation quantizer represents
    bits per layer     each linear's weight and activation format and bits
    lowering           the model compiled with TVM (``--target``, default this CPU): which
                       linear got which integer kernel, and why the others stayed float
                       (``--no-compile`` skips it)
    size breakdown     bytes by component (embeddings, linears per format, other), float vs
                       quantized

The folder (``-o``; default ``lowbit-out/<model>-<recipe>/report``) holds index.html, the
PNGs and report.json (every number on the page), written atomically: into a temporary folder
beside it that then takes its place. An existing folder is replaced only if it holds a report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError, LowbitError
from lowbit.io import replace_folder
from lowbit.model_files import check_positive, kind_of, onnx_summary, out_dir

__all__ = ["EXAMPLES", "add_arguments", "run", "write"]

EXAMPLES = """examples:
  lowbit report ./bert                       # -> lowbit-out/bert-W8A8/report/index.html
  lowbit report ./bert --recipe W4A8 --calibration sst2_train.tsv --seq 64
  lowbit report ./bert --no-compile -o bert_report      # ranges, bits and sizes; no TVM
  lowbit report lowbit-out/bert-W8A8/model.qdq.onnx     # a QDQ file, as it is
"""
PAGE = "index.html"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lowbit.quantize_cli import DEFAULT_SEQ, add_calibration_arguments

    p.add_argument("model", type=Path, metavar="MODEL",
                   help="a Hugging Face model folder, or a QDQ .onnx file")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="report folder (default lowbit-out/<model>-<recipe>/report)")
    add_calibration_arguments(p, recipe_default=None)
    p.add_argument("--seq", type=int, default=None,
                   help=f"sequence length of the calibration text and of the compile (default "
                        f"{DEFAULT_SEQ} or the model's maximum if smaller, or the ONNX file's "
                        f"fixed length)")
    p.add_argument("--target", default="cpu",
                   help="what the lowering compiles for, as lowbit compile --target (default "
                        "cpu: this machine)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the TVM compile (the page's lowering section says so)")


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise LowbitError(f"lowbit report draws its plots with matplotlib, which cannot be "
                          f"imported ({e}): pip install 'lowbit[report]'") from e


def _refuse_other_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                    and not (folder / PAGE).is_file())):
        raise ConfigError(f"{folder} exists and is not a lowbit report folder (no {PAGE}): "
                          f"not replacing it; give another -o DIR")


def write(report: Any, folder: Path) -> list[Path]:
    """Draw ``report``'s plots and write its page and report.json into ``folder``,
    atomically; returns the files written (the page last)."""
    from lowbit.report.page import render
    from lowbit.report.plots import draw

    _refuse_other_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        plots = draw(report, tmp)
        (tmp / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
        (tmp / PAGE).write_text(render(report, plots), encoding="utf-8")
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / p.file for p in plots] + [folder / "report.json", folder / PAGE]


def _recipe(args: argparse.Namespace, kind: str) -> str:
    """The recipe a Hugging Face folder is quantized with, or the one a QDQ file records."""
    if kind == "hf":
        from lowbit import recipes

        return recipes.get(args.recipe or "W8A8").name
    if args.recipe is not None:
        raise ConfigError(f"--recipe {args.recipe}: {args.model} is reported as it is (--recipe "
                          f"quantizes a Hugging Face folder)")
    summary = onnx_summary(args.model)
    if not summary.quantized:
        raise ConfigError(f"{args.model} is not quantized: quantize it first (lowbit quantize "
                          f"{args.model}), or report its Hugging Face folder")
    return summary.recipe or "qdq"


def run(args: argparse.Namespace) -> int:
    _need_matplotlib()
    kind = kind_of(args.model)
    if kind not in ("hf", "onnx"):
        what = "a compiled module" if kind == "module" else "a .pt2 program"
        raise ConfigError(f"MODEL {args.model} is {what}: lowbit report takes a Hugging Face "
                          f"folder or a QDQ .onnx file (the model it came from)")
    check_positive(seq=args.seq, num_calibration=args.num_calibration)
    recipe = _recipe(args, kind)
    folder = args.output or out_dir(args.model, recipe) / "report"
    _refuse_other_folder(folder)
    target = None
    if not args.no_compile:
        from lowbit.compile_cli import parse_target

        target = parse_target(args.target)
    t0 = time.perf_counter()
    if kind == "hf":
        from lowbit.report.from_hf import collect_hf

        args.recipe = recipe
        report = collect_hf(args, target)
    else:
        from lowbit.report.from_onnx import collect_onnx

        report = collect_onnx(args, target, recipe)
    files = write(report, folder)
    for f in files:
        print(f"wrote {f}")
    measured = [s for s in report.sites if s.lo is not None]
    fb = sum(s.float_bytes for s in report.sizes) / 1e6
    qb = sum(s.quant_bytes for s in report.sizes) / 1e6
    ints = sum(x.kernel not in (None, "fp32") for x in report.linears)
    lowered = f", {ints} on integer kernels" if report.lowering and not report.lowering.error \
        else ""
    print(f"report of {args.model} ({recipe}): {len(report.linears)} linear(s){lowered}; "
          f"{sum(len(s.outliers) for s in measured)} outlier channel(s) in "
          f"{sum(bool(s.outliers) for s in measured)} of {len(measured)} input(s); "
          f"{fb:.2f} MB float -> {qb:.2f} MB; in {time.perf_counter() - t0:.1f} s; open "
          f"{(folder / PAGE).resolve().as_uri()}")
    return 0
