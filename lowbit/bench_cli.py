"""``lowbit bench``: latency and throughput of a compiled module against torch and onnxruntime,
in one process, at one batch size and sequence length; medians; a JSON report.

DIR is a module folder ``lowbit compile`` wrote (it runs at its compiled shapes; the models it
came from, recorded in its meta.json, are timed beside it); MODEL is what ``lowbit compile``
takes (a Hugging Face folder, a QDQ ONNX file, a .pt2 file), compiled first at ``--batch`` /
``--seq`` into the output folder. Engines, on the same seeded inputs and thread count, one
after another:

    torch        the float eager model (a Hugging Face source, also the folder a QDQ file
                 from ``lowbit quantize`` records) or the .pt2 program; ``--torch PATH``
                 names another
    onnxruntime  the QDQ ONNX file (an ONNX source; a Hugging Face model's quantized graph is
                 exported to <out>/model.qdq.onnx first); its session is released before the
                 next engine runs (its worker threads spin and would slow it)
    lowbit TVM   the compiled module

Each engine is warmed up, then timed ``--iters`` times: the median and minimum latency,
sequences/s = batch / median and tokens/s = batch * seq / median. The report goes to
``<out>/bench.json`` (default out: the model's ``lowbit-out/<model>-<recipe>/`` folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError
from lowbit.model_files import OUT_ROOT, check_positive, kind_of, load_pt2, out_dir

__all__ = ["EXAMPLES", "add_arguments", "run"]

EXAMPLES = """examples:
  lowbit bench lowbit-out/bert-W8A8/tvm-cpu        # a compiled module, against its sources
  lowbit bench ./bert --batch 8 --seq 128          # quantize, export, compile, then time
  lowbit bench model.qdq.onnx --torch ./bert --threads 2 --iters 50
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lowbit.compile_cli import add_build_arguments

    add_build_arguments(p, metavar="DIR|MODEL",
                        help="a module folder lowbit compile wrote, or a model as lowbit "
                             "compile takes (compiled first)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="folder for bench.json (and, for a MODEL, the module and QDQ file); "
                        "default lowbit-out/<model>-<recipe>/")
    p.add_argument("--torch", type=Path, default=None, metavar="PATH",
                   help="the torch model to time (a Hugging Face folder or a .pt2 file; default: "
                        "the source of the module, when it is one)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every engine (default: the cores this process may use)")
    p.add_argument("--iters", type=int, default=30, help="timed runs per engine (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")


@dataclasses.dataclass
class _Plan:
    """What is timed: the module, its inputs, and the other engines' models (or why not)."""

    module: Any
    inputs: dict
    out: Path
    source: str
    recipe: str
    torch_model: Any = None
    onnx: Path | None = None
    skipped: dict = dataclasses.field(default_factory=dict)


def _module_inputs(meta: dict) -> dict:
    import torch

    from lowbit.testing.inputs import InputSpec, make_inputs

    bounds = meta.get("input_bounds", {})
    specs = [InputSpec(i["name"], tuple(i["shape"]), getattr(torch, i["dtype"]),
                       bounds[i["name"]]["max"] + 1 if i["name"] in bounds else None)
             for i in meta["inputs"]]
    return make_inputs(specs)


def _check_shape(args: argparse.Namespace, folder: Path, inputs: dict) -> None:
    shape = next((list(t.shape) for t in inputs.values() if t.dim() >= 2), None)
    for flag, value, axis in (("--batch", args.batch, 0), ("--seq", args.seq, 1)):
        if value is not None and shape is not None and shape[axis] != value:
            raise ConfigError(f"{flag} {value}: the module in {folder} was compiled for inputs "
                              f"of shape {shape}; drop {flag}, or compile again: lowbit compile "
                              f"MODEL {flag} {value}")


def _load_torch(path: Path) -> Any:
    kind = kind_of(path, what="--torch")
    if kind == "hf":
        from lowbit.hf import load_hf_model

        return load_hf_model(path)[0]
    if kind == "pt2":
        return load_pt2(path)
    raise ConfigError(f"--torch {path}: give a Hugging Face folder or a .pt2 file")


def _from_module(args: argparse.Namespace, folder: Path) -> _Plan:
    import lowbit

    if args.recipe is not None:
        raise ConfigError(f"--recipe {args.recipe}: {folder} is compiled already")
    module = lowbit.load(folder)
    if module.target_kind != "llvm":
        raise ConfigError(f"{folder} was compiled for {module.target_kind}; lowbit bench times "
                          f"CPU modules")
    inputs = _module_inputs(module.meta)
    _check_shape(args, folder, inputs)
    src = module.meta.get("source", {})
    path = Path(src["path"]) if src.get("path") else None
    recipe = src.get("recipe", "qdq")
    in_out = folder.resolve().parent.parent.name == OUT_ROOT.name
    out = args.output or (folder.parent if in_out or path is None else out_dir(path, recipe))
    plan = _Plan(module, inputs, out, str(path or folder), recipe)
    torch_path = args.torch or (Path(src["torch"]) if src.get("torch") else None)
    if torch_path is not None and (args.torch is not None or torch_path.exists()):
        plan.torch_model = _load_torch(torch_path)
    else:
        plan.skipped["torch"] = "no torch model recorded for the module: pass --torch PATH"
    if path is not None and path.is_file() and src.get("kind") == "onnx":
        plan.onnx = path
    elif src.get("kind") == "hf":
        plan.skipped["onnxruntime"] = (f"the module was compiled from a Hugging Face folder: "
                                       f"lowbit bench {path} exports its QDQ file and times it")
    else:
        plan.skipped["onnxruntime"] = "the module was not compiled from an ONNX file"
    return plan


def _from_model(args: argparse.Namespace, threads: int) -> _Plan:
    from lowbit.backends.tvm.target import host_target
    from lowbit.compile_cli import build, save

    built = build(args, host_target(threads))
    out = args.output or out_dir(built.source, built.recipe)
    save(built, out / "tvm-cpu")
    plan = _Plan(built.module, built.example, out, str(built.source), built.recipe,
                 torch_model=built.torch_model, onnx=built.onnx)
    if args.torch is not None or (plan.torch_model is None and built.torch_source):
        plan.torch_model = _load_torch(args.torch or built.torch_source)
    elif plan.torch_model is None:
        plan.skipped["torch"] = "an ONNX file holds no torch model: pass --torch PATH"
    if built.qgm is not None:                    # a Hugging Face source: its QDQ file
        from lowbit.export.onnx import export_onnx

        plan.onnx = export_onnx(built.qgm, out / "model.qdq.onnx", ((), built.example))
        print(f"wrote {plan.onnx}")
    elif plan.onnx is None:
        plan.skipped["onnxruntime"] = "a .pt2 source has no ONNX file to run"
    return plan


def _time(plan: _Plan, threads: int, iters: int, warmup: int) -> list[tuple[str, Any]]:
    import torch

    from lowbit.testing.run import _fx_arguments
    from lowbit.timing import measure, time_onnxruntime

    rows = []
    torch.set_num_threads(threads)
    if plan.torch_model is not None:
        model, inputs = plan.torch_model, plan.inputs
        if isinstance(model, torch.fx.GraphModule) and getattr(model, "_in_spec", None):
            args, kwargs = _fx_arguments(model, inputs)
        else:
            args, kwargs = (), inputs
        with torch.no_grad():
            rows.append(("torch (eager)", measure(lambda: model(*args, **kwargs), iters, warmup)))
    if plan.onnx is not None:
        rows.append(("onnxruntime", time_onnxruntime(plan.onnx, threads, plan.inputs, iters,
                                                     warmup)))
    feed = {k: v.numpy() for k, v in plan.inputs.items()}
    rows.append(("lowbit TVM", measure(lambda: plan.module(**feed), iters, warmup)))
    return rows


def _report(plan: _Plan, rows: list, threads: int, iters: int, warmup: int) -> dict:
    import lowbit
    from lowbit.timing import load_average

    shape = next((list(t.shape) for t in plan.inputs.values() if t.dim() >= 2), [1, 1])
    batch, seq = shape[0], shape[1]
    base = rows[0][1].median_ms if rows[0][0].startswith("torch") else None
    engines = [{"engine": name, "median_ms": round(lat.median_ms, 4),
                "min_ms": round(lat.min_ms, 4), "iters": lat.iters,
                "sequences_per_s": round(batch * 1e3 / lat.median_ms, 2),
                "tokens_per_s": round(batch * seq * 1e3 / lat.median_ms, 1),
                **({"speedup_vs_torch": round(base / lat.median_ms, 3)} if base else {})}
               for name, lat in rows]
    meta = plan.module.meta
    return {"model": plan.source, "recipe": plan.recipe, "batch": batch, "seq": seq,
            "inputs": {k: list(v.shape) for k, v in plan.inputs.items()}, "threads": threads,
            "iters": iters, "warmup": warmup, "statistic": "median",
            "target": meta.get("target"), "kernel_family": meta.get("kernel_family"),
            "load_average_1min": load_average(), "engines": engines,
            "skipped": plan.skipped, "lowbit_version": lowbit.__version__}


def _print(report: dict) -> None:
    print(f"batch {report['batch']}, seq {report['seq']}, {report['threads']} thread(s), "
          f"median of {report['iters']} runs after {report['warmup']} warm-up:")
    for e in report["engines"]:
        speed = f"  {e['speedup_vs_torch']:5.2f}x torch" if "speedup_vs_torch" in e else ""
        print(f"  {e['engine']:14s} {e['median_ms']:9.3f} ms (min {e['min_ms']:.3f})  "
              f"{e['sequences_per_s']:9.1f} seq/s  {e['tokens_per_s']:11.1f} tokens/s{speed}")
    for engine, why in report["skipped"].items():
        print(f"  {engine:14s} skipped: {why}")
    if report["load_average_1min"] is not None:
        print(f"  (1-minute load average {report['load_average_1min']:.2f}; a busy machine "
              f"moves every number)")


def run(args: argparse.Namespace) -> int:
    from lowbit.io import write_text_atomic
    from lowbit.timing import available_cores

    check_positive(threads=args.threads, iters=args.iters)
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    threads = args.threads or available_cores()
    os.environ["TVM_NUM_THREADS"] = str(threads)   # read when TVM's thread pool starts
    if kind_of(args.model, what="DIR|MODEL") == "module":
        plan = _from_module(args, args.model)
    else:
        plan = _from_model(args, threads)
    print(f"[lowbit] timing {plan.source} ({plan.recipe})", file=sys.stderr)
    report = _report(plan, _time(plan, threads, args.iters, args.warmup), threads, args.iters,
                     args.warmup)
    _print(report)
    path = write_text_atomic(Path(plan.out) / "bench.json", json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0
