"""``compile(graph, target, tune)``: a quantized (or float) FX graph or QDQ ONNX -> CompiledModule.

    pipeline = pipeline_for(target)                              (pipelines/cpu.py, cuda.py)
    FX:   copy -> pipeline.fx_passes (integer-kernel ops) -> re-export + import (frontends/fx.py)
    ONNX: read -> import -> QDQ MatMuls to int8 kernels       (frontends/onnx.py, onnx_qdq.py)
         -> pipeline.prepare (lift weight transforms, legalize, fuse)
         -> pipeline.schedule ([tune: records persist in a database], verified tuned records,
            else the target's rule set) -> pipeline.build -> CompiledModule

The user's graph is never modified. Shapes are static: the module runs on inputs shaped like
the example inputs the graph was captured with (``gm.meta["lowbit_example_inputs"]``) or like
``example_inputs`` given here.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import tvm
from torch import fx

import lowbit
from lowbit.backends.tvm.frontends.fx import import_graph
from lowbit.backends.tvm.frontends.onnx import import_onnx, is_onnx
from lowbit.backends.tvm.input_bounds import input_bounds
from lowbit.backends.tvm.lowering.legalize import LOWERING_META
from lowbit.backends.tvm.lowering.word_bits import KINDS as TIERED_KINDS
from lowbit.backends.tvm.pipelines import pipeline_for
from lowbit.backends.tvm.runtime import CompiledModule
from lowbit.backends.tvm.target import required_cpu_flags, resolve_target
from lowbit.backends.tvm.tune import Tune
from lowbit.errors import ConfigError
from lowbit.passes.fx.word_bits import word_bits_nodes
from lowbit.progress import say, stages
from lowbit.warning_filters import copy_graph, quiet

__all__ = ["Tune", "compile"]


def _example(gm: fx.GraphModule, example_inputs: Any) -> tuple[tuple, dict]:
    if example_inputs is None:
        ex = getattr(gm, "meta", {}).get("lowbit_example_inputs")
        if ex is None:
            raise ConfigError("the graph carries no example inputs (gm.meta['lowbit_example_"
                              "inputs'], set by lowbit.capture): pass example_inputs=")
        return tuple(ex[0]), dict(ex[1])
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Sequence):
        return tuple(example_inputs), {}
    raise ConfigError(f"example_inputs must be a tensor, a tuple or a dict, got "
                      f"{type(example_inputs).__name__}")


def _input_meta(mod: tvm.IRModule, names: list[str]) -> list[dict]:
    main = mod["main"]
    out = []
    for var in main.params[:len(names)]:
        ty = var.ty
        out.append({"name": str(var.name), "shape": [int(d) for d in ty.shape.values],
                    "dtype": str(ty.dtype)})
    return out


def _import_fx(graph: Any, example_inputs: Any, passes: list):
    """An FX graph (or an nn.Module, captured first) -> (ImportedModel, lowering log) after
    the pipeline's FX ``passes``; the user's graph is copied, never modified."""
    if not isinstance(graph, fx.GraphModule):
        if not isinstance(graph, torch.nn.Module):
            raise ConfigError(f"compile() takes an fx.GraphModule (lowbit.capture / quantize), "
                              f"an nn.Module or an ONNX model, got {type(graph).__name__}")
        if example_inputs is None:
            raise ConfigError("compiling an nn.Module needs example_inputs= (or capture it "
                              "first with lowbit.capture)")
        graph = lowbit.capture(graph.eval(), example_inputs)
    example = _example(graph, example_inputs)
    gm = copy_graph(graph)
    for p in passes:
        p(gm)
    tiered = [(n.name, n.target.__name__.split(".")[0]) for n in word_bits_nodes(gm)]
    return import_graph(gm, example), list(gm.meta.get(LOWERING_META, [])) + tiered


STAGES = ("import", "prepare", "schedule", "build")
INT8_KINDS = ("linear_u8s8", "linear_u8s8_q", "linear_u8s8_peg")


def lowering_summary(lowering: list, family: str | None) -> str:
    """One line: how many linears got which kernel, fp32 ones with their reasons, and the
    per-word mixed-precision word table's lookups and tied heads."""
    kinds = collections.Counter(k for _, k in lowering)
    n_int8 = sum(kinds[k] for k in INT8_KINDS)
    fp32 = collections.Counter(k for _, k in lowering if k not in INT8_KINDS
                               and k not in ("linear_w4a16", "bcq_linear", *TIERED_KINDS))
    why = "; ".join(f"{c} x {reason}" for reason, c in fp32.most_common())
    return (f"lowering: {n_int8} int8 linear(s)"
            + (f" on {family}" if n_int8 else "")
            + f" ({kinds['linear_u8s8_q']} with a requantizing epilogue, "
              f"{kinds['linear_u8s8_peg']} PEG group GEMM), {kinds['linear_w4a16']} int4 "
              f"linear(s), " + (f"{kinds['bcq_linear']} BCQ bit-plane linear(s), "
                                if kinds["bcq_linear"] else "")
            + f"{sum(fp32.values())} fp32 linear(s)" + (f" [{why}]" if why else "")
            + (f"; per-word word table: {kinds['tiered_embedding']} tiered lookup(s), "
               f"{kinds['tiered_linear']} tiered LM head(s)"
               if any(kinds[k] for k in TIERED_KINDS) else ""))


def compile(graph: Any, target: Any = "cpu", tune: Tune | None = None, *,
            example_inputs: Any = None, int8: bool = True, int4: bool = True,
            progress: bool = True, cuda_graph: bool | None = None) -> CompiledModule:
    """Compile ``graph`` for ``target`` with real integer kernels.

    Args:
        graph: an ``fx.GraphModule`` from ``lowbit.capture`` (float) or ``lowbit.quantize``;
            an ``nn.Module`` is captured first (needs ``example_inputs``); or a QDQ ONNX
            model (``onnx.ModelProto``, a .onnx path, ``lowbit.load_onnx``'s result).
        target: "cpu" (this host), a TVM target dict, or a ``tvm.target.Target``.
        tune: None (default schedules only) or ``Tune(trials=, db=)``.
        example_inputs: inputs fixing the compiled shapes (default: the graph's own).
        int8, int4: lower W8A8 / W4A16 linears to integer kernels (else float fake-quant).
        progress: a bar over the stages on a terminal; the lowering summary, the tuning
            lines and one summary line on stderr.
        cuda_graph: CUDA targets only: run the model's kernel launches as CUDA graphs,
            captured on the first call and replayed after (pipelines/cuda.py; default on:
            batch-1 latency is launch-bound otherwise). False builds the plain launch
            sequence. Recorded in the module's meta ("cuda_graph").
    """
    t0 = time.perf_counter()
    tgt = resolve_target(target)
    if tune is not None and not isinstance(tune, Tune):
        raise ConfigError(f"tune must be None or lowbit.Tune(...), got {type(tune).__name__}")
    pipeline = pipeline_for(tgt)
    build_opts = {}
    if getattr(pipeline, "NAME", "") == "cuda":
        build_opts["cuda_graph"] = pipeline.CUDA_GRAPH if cuda_graph is None else bool(cuda_graph)
    elif cuda_graph:
        raise ConfigError(f"cuda_graph=True needs a CUDA target, not {tgt.kind.name}")
    family, no_int8 = pipeline.kernel_family(tgt)
    int8_ok = int8 and family is not None
    with stages(STAGES, desc="compiling", enabled=progress) as stage:
        stage("import")
        if is_onnx(graph):  # QDQ ONNX (proto, .onnx path, onnx_ir)
            imported, lowering = import_onnx(graph, example_inputs,
                                             int8=int8_ok and pipeline.ONNX_INT8)
        else:
            imported, lowering = _import_fx(graph, example_inputs,
                                            pipeline.fx_passes(int8=int8_ok, int4=int4))
        if int8 and not int8_ok:   # name the real reason, not "int8 disabled"
            lowering = [(n, f"fp32: {no_int8}" if k == "fp32: int8 disabled" else k)
                        for n, k in lowering]
        say(lowering_summary(lowering, family), enabled=progress)
        stage("prepare")
        with quiet("tvm-take-fast-mode"):    # legalizing embedding lookups (relax.take)
            mod = pipeline.prepare(imported.mod, tgt)
        stage("schedule")
        mod, tuned = pipeline.schedule(mod, tgt, tune, progress=progress)
        stage("build")
        ex = pipeline.build(mod, tgt, **build_opts)
    meta = {
        "inputs": _input_meta(imported.mod, imported.input_names),
        "input_bounds": input_bounds(imported.mod, len(imported.input_names)),
        "outputs": imported.output_names or ["output"],
        "target": str(tgt),
        "kernel_family": family,
        "cpu_flags": required_cpu_flags(tgt),
        "functions": [gv.name_hint for gv, f in mod.functions_items()
                      if isinstance(f, tvm.relax.Function)],
        "lowering": [list(x) for x in lowering],
        "tuned_kernels": tuned,
        **build_opts,
        "lowbit_version": lowbit.__version__,
        "tvm_version": tvm.__version__,
    }
    say(f"compiled for {tgt} in {time.perf_counter() - t0:.1f} s", enabled=progress)
    return CompiledModule(ex, imported.params, meta)
