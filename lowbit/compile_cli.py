"""``lowbit compile``: a model -> a TVM module folder that ``lowbit.load`` runs.

MODEL is a QDQ ONNX file (``lowbit quantize``'s, or any static QDQ export; compiled as it is,
its input shapes from the file unless ``--batch`` / ``--seq`` fix symbolic ones), a Hugging
Face folder (quantized first with ``--recipe``, default W8A8, on calibration text, then
compiled from the FX graph), or a ``.pt2`` program saved with ``torch.export.save``
(compiled as saved). A float ONNX or .pt2 model compiles to fp32 kernels, with a warning.

The module folder (``-o``; default ``lowbit-out/<model>-<recipe>/tvm-cpu``, ``tvm-cuda`` for
a GPU target) holds model.so, params.bin and meta.json, written atomically; its meta.json
also records where the module came from (``source``: path, kind, recipe, shapes), which
``lowbit bench`` reads to find the models to time it against.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError
from lowbit.model_files import (
    batch_and_seq,
    check_positive,
    kind_of,
    load_pt2,
    onnx_summary,
    out_dir,
)

__all__ = ["EXAMPLES", "Built", "add_arguments", "add_build_arguments", "build", "run", "save"]

EXAMPLES = """examples:
  lowbit compile lowbit-out/bert-W8A8/model.qdq.onnx    # -> lowbit-out/bert-W8A8/tvm-cpu/
  lowbit compile ./bert --recipe W8A8 --seq 64 -o bert_tvm
  lowbit compile model.pt2 --target '{"kind": "llvm", "mcpu": "x86-64-v3"}'
  lowbit compile model.qdq.onnx --target cuda           # sm_90, built here, run on the GPU host
  lowbit compile model.qdq.onnx --tune-trials 256 --db tuning/
"""
DEFAULT_BATCH, DEFAULT_SEQ = 1, 128


def add_build_arguments(p: argparse.ArgumentParser, *, metavar: str = "MODEL",
                        help: str = "a QDQ .onnx file, a Hugging Face model folder, or a "
                                    ".pt2 file") -> None:
    """MODEL and everything that decides what is compiled (shared with ``lowbit bench``)."""
    from lowbit.quantize_cli import add_calibration_arguments

    p.add_argument("model", type=Path, metavar=metavar, help=help)
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch size compiled for (default {DEFAULT_BATCH}, or the file's "
                        f"fixed batch)")
    p.add_argument("--seq", type=int, default=None,
                   help=f"sequence length compiled for (default {DEFAULT_SEQ}, or the file's "
                        f"fixed length, or the model's maximum if smaller)")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule trials for kernels the tuning database has no record of "
                        "(default 0: default schedules plus what the database holds)")
    p.add_argument("--db", type=Path, default=None,
                   help="tuning database folder (default: <lowbit cache>/tvm-tuning)")
    add_calibration_arguments(p, recipe_default=None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_build_arguments(p)
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="module folder (default lowbit-out/<model>-<recipe>/tvm-<cpu|cuda>)")
    p.add_argument("--target", default="cpu",
                   help="cpu (this machine), cuda (sm_90), an LLVM CPU name (x86-64-v3), or "
                        "a TVM target dict as JSON (default cpu)")


def parse_target(text: str) -> Any:
    """A --target value: a name, or a TVM target dict written as JSON."""
    from lowbit.backends.tvm.target import resolve_target

    target: Any = text
    if text.strip().startswith("{"):
        try:
            target = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--target {text}: not valid JSON ({e.msg}); write a dict such "
                              f"as '{{\"kind\": \"llvm\", \"mcpu\": \"x86-64-v3\"}}'") from e
    try:
        return resolve_target(target)
    except ConfigError as e:
        raise ConfigError(f"--target {text}: {e}") from e


@dataclasses.dataclass
class Built:
    """A compiled module and what it came from (``lowbit bench`` times it against them)."""

    module: Any
    kind: str                   # "hf", "onnx" or "pt2"
    source: Path
    recipe: str                 # for folder names: a recipe name, "qdq" or "fp32"
    example: dict               # the inputs of the compiled shape, by name
    torch_model: Any = None     # the eager HF model or the .pt2 module
    qgm: Any = None             # HF: the quantized graph the module was compiled from
    onnx: Path | None = None    # ONNX: the file
    torch_source: Path | None = None   # the torch model (HF folder, .pt2) it came from


def _is_quantized_fx(gm: Any) -> bool:
    return any("quantized_decomposed" in str(n.target) or "lowbit" in str(n.target)
               for n in gm.graph.nodes if n.op == "call_function")


def _float_warning(source: Path) -> None:
    print(f"[lowbit] warning: {source} is not quantized: compiling fp32 kernels (quantize it "
          f"first, lowbit quantize, for integer kernels)", file=sys.stderr)


def _hf(args: argparse.Namespace, target: Any, tune: Any) -> Built:
    from lowbit import recipes
    from lowbit.compiler import compile as compile_graph
    from lowbit.quantize_cli import quantize_hf

    recipe = recipes.get(args.recipe or "W8A8")
    batch = DEFAULT_BATCH if args.batch is None else args.batch
    model, qgm, example = quantize_hf(args.model, recipe, args, batch=batch, seq=args.seq)
    module = compile_graph(qgm, target=target, tune=tune, example_inputs=example)
    return Built(module, "hf", args.model, recipe.name, example, torch_model=model, qgm=qgm,
                 torch_source=args.model)


def _onnx(args: argparse.Namespace, target: Any, tune: Any) -> Built:
    from lowbit.compiler import compile as compile_graph
    from lowbit.testing.inputs import make_inputs

    summary = onnx_summary(args.model)
    batch, seq = batch_and_seq(summary.specs, args.model, args.batch, args.seq,
                               default_batch=DEFAULT_BATCH, default_seq=DEFAULT_SEQ)
    if not summary.quantized:
        _float_warning(args.model)
    example = make_inputs(summary.specs, batch=batch, seq=seq)
    with _diagnosed(args.model, lambda: _run_onnx(args.model, example), example):
        module = compile_graph(args.model, target=target, tune=tune, example_inputs=example)
    recipe = summary.recipe or ("qdq" if summary.quantized else "fp32")
    source = Path(summary.source) if summary.source and Path(summary.source).exists() else None
    return Built(module, "onnx", args.model, recipe, example, onnx=args.model,
                 torch_source=source)


def _run_onnx(path: Path, example: dict) -> None:
    from lowbit.backends.onnxruntime import OrtRunner

    OrtRunner(path).run(example)


@contextlib.contextmanager
def _diagnosed(source: Path, run_source: Any, example: dict) -> Iterator[None]:
    """A failed compile whose source model cannot run at the example's shapes either is the
    user's: say so, naming the shapes and the flags (a model with fewer positions than
    ``--seq``, a batch the file cannot take); otherwise the compile error stands."""
    from lowbit.errors import CompileError

    try:
        yield
    except CompileError:
        try:
            run_source()
        except Exception as e:  # the runtimes raise their own types
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in example.items())
            reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
            raise ConfigError(f"{source} cannot run at the shapes compiled for ({shapes}): "
                              f"{reason}; give a --batch / --seq the model takes") from e
        raise


def _pt2(args: argparse.Namespace, target: Any, tune: Any) -> Built:
    from lowbit.compiler import compile as compile_graph
    from lowbit.testing.inputs import input_specs, make_inputs
    from lowbit.testing.run import _fx_arguments

    gm = load_pt2(args.model)
    specs = input_specs(gm)
    batch, seq = batch_and_seq(specs, args.model, args.batch, args.seq,
                               default_batch=DEFAULT_BATCH, default_seq=DEFAULT_SEQ)
    quantized = _is_quantized_fx(gm)
    if not quantized:
        _float_warning(args.model)
    example = make_inputs(specs, batch=batch, seq=seq)
    fx_args, fx_kwargs = _fx_arguments(gm, example)
    if fx_args and fx_kwargs:
        raise ConfigError(f"{args.model}: a program taking both positional and keyword inputs "
                          f"cannot be compiled from the command line; use lowbit.compile")
    with _diagnosed(args.model, lambda: gm(*fx_args, **fx_kwargs), example):
        module = compile_graph(gm, target=target, tune=tune,
                               example_inputs=fx_kwargs if fx_kwargs else fx_args)
    return Built(module, "pt2", args.model, "qdq" if quantized else "fp32", example,
                 torch_model=gm, torch_source=args.model)


def build(args: argparse.Namespace, target: Any) -> Built:
    """Compile ``args.model`` for ``target`` (see the module docstring)."""
    from lowbit.backends.tvm.tune import Tune
    from lowbit.models.cache import cache_dir

    kind = kind_of(args.model)
    check_positive(batch=args.batch, seq=args.seq)
    if args.tune_trials < 0:
        raise ConfigError(f"--tune-trials must be >= 0, got {args.tune_trials}")
    if kind == "module":
        raise ConfigError(f"MODEL {args.model} is a compiled module already; lowbit bench "
                          f"{args.model} times it")
    if kind != "hf" and args.recipe is not None:
        raise ConfigError(f"--recipe {args.recipe}: {args.model} is compiled as it is (--recipe "
                          f"quantizes a Hugging Face folder); quantize a float ONNX file first "
                          f"with lowbit quantize")
    tune = Tune(trials=args.tune_trials, db=args.db or cache_dir() / "tvm-tuning")
    return {"hf": _hf, "onnx": _onnx, "pt2": _pt2}[kind](args, target, tune)


def module_folder(built: Built, output: Path | None) -> Path:
    if output is not None:
        return output
    return out_dir(built.source, built.recipe) / f"tvm-{_device(built.module)}"


def _device(module: Any) -> str:
    return "cuda" if module.target_kind == "cuda" else "cpu"


def save(built: Built, folder: Path) -> Path:
    """Save the module to ``folder`` with its ``source`` recorded; print what was written."""
    shapes = {i["name"]: i["shape"] for i in built.module.meta["inputs"]}
    torch_source = str(built.torch_source.resolve()) if built.torch_source else None
    built.module.meta["source"] = {"path": str(built.source.resolve()), "kind": built.kind,
                                   "recipe": built.recipe, "inputs": shapes,
                                   "torch": torch_source}
    folder = built.module.save(folder)
    mb = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
    ins = ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in built.module.meta["inputs"])
    print(f"wrote {folder}/ (model.so, params.bin, meta.json; {mb:.1f} MB): {ins} -> "
          f"{', '.join(built.module.output_names)}")
    return folder


def run(args: argparse.Namespace) -> int:
    target = parse_target(args.target)
    t0 = time.perf_counter()
    built = build(args, target)
    folder = save(built, module_folder(built, args.output))
    int8 = sum(k.startswith("linear_u8s8") for _, k in built.module.meta["lowering"])
    family = f", {int8} int8 linear(s) on {built.module.meta['kernel_family']}" if int8 else ""
    bench = f", or time it with lowbit bench {folder}" if _device(built.module) == "cpu" else \
        " on the GPU machine (TVM runtime only)"
    print(f"compiled {built.source} ({built.recipe}) for {_device(built.module)}{family} in "
          f"{time.perf_counter() - t0:.1f} s; run it with lowbit.load({str(folder)!r}){bench}")
    return 0
