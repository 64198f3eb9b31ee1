"""The CUDA pipeline: the stages of ``lowbit.compile`` for NVIDIA GPUs (same names as cpu.py),
compiling to sm_XX machine code on a machine without a GPU.

    fx_passes       LegalizeQuantLinear without requantizing epilogues (CPU kernels only)
    ONNX_INT8       False: QDQ ONNX files keep float q/dq math on CUDA
    kernel_family   "u8s8/cuda (<arch>: tensor-core mma)"
    prepare         the shared Relax passes (common.py)
    schedule        the kernel configurations timed on a GPU (scripts/gpu_tune.py), read from
                    the tuning database folder (no MetaSchedule on CUDA: TVM-NOTES.md), then
                    the CUDA rule set (schedules/cuda.py: lowbit's device kernels, dlight)
    lower_passes    TVM's CUDA dataflow-lowering and finalization passes
    build           device code compiled by nvcc (``TVM_CUDA_COMPILE_MODE=nvcc``) to a cubin
                    for the target's arch, with kernels/cuda_kernels.cu in front of it; with
                    ``cuda_graph=True`` (the default, ``CUDA_GRAPH``) TVM's RewriteCUDAGraph
                    (in finalize_passes, enabled by the pass config ``relax.backend.use_cuda_graph``)
                    lifts the static allocations into one function run once and the kernel
                    launches between them into functions captured as CUDA graphs on the first
                    call and replayed after (``vm.builtin.cuda_graph.*`` of the CUDA runtime)

Without a GPU, TVM's CUDA runtime library does not load (no libcuda.so.1) and TVM silently
embeds CUDA source instead of machine code; ``cuda_env.load_cuda_backend(allow_stub=True)``
loads it against a stub driver first, so the exported library holds an sm_90 cubin
(``fatbin_arches`` reads it back). Weights are parameters (never constants of the library).
"""

from __future__ import annotations

import contextlib
import os
import re

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as cuda_pipeline

from lowbit.backends.tvm.cuda_env import load_cuda_backend
from lowbit.backends.tvm.kernels.cuda import (
    cuda_source_hook,
    kernel_configs,
    read_config_table,
    wgmma_arch,
)
from lowbit.backends.tvm.kernels.registry import KERNEL_ATTR
from lowbit.backends.tvm.lowering.legalize import LegalizeQuantLinear
from lowbit.backends.tvm.pipelines import common
from lowbit.backends.tvm.pipelines.common import prepare_passes
from lowbit.backends.tvm.schedules.base import apply_rules, prim_funcs
from lowbit.backends.tvm.schedules.cuda import default_rules

__all__ = ["CUDA_GRAPH", "CUDA_GRAPH_BUILTINS", "NAME", "ONNX_INT8", "build", "build_kernel", "fatbin_arches", "fx_passes",
           "kernel_family", "lower_passes", "prepare", "prepare_passes", "rowmajor_u8s8_weights",
           "schedule"]

NAME = "cuda"
ONNX_INT8 = False
CUDA_GRAPH = True        # lowbit.compile(..., cuda_graph=None) on a CUDA target means this
USE_CUDA_GRAPH = "relax.backend.use_cuda_graph"   # TVM's pass config read by RewriteCUDAGraph
CUDA_GRAPH_BUILTINS = ("vm.builtin.cuda_graph.run_or_capture",
                       "vm.builtin.cuda_graph.get_cached_alloc")


def fx_passes(int8: bool, int4: bool) -> list:
    """FX passes from a quantized graph to the ``lowbit::`` kernel ops (lowering/)."""
    return [LegalizeQuantLinear(int8=int8, int4=int4, requant=False)]


def kernel_family(target: tvm.target.Target) -> tuple[str | None, str]:
    if wgmma_arch(target):
        return f"u8s8/cuda ({target.attrs.get('arch', '?')}: wgmma + TMA)", ""
    return f"u8s8/cuda ({target.attrs.get('arch', '?')}: tensor-core mma)", ""


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """common.prepare; for sm_90a targets (the wgmma route, issue 20) first
    ``rowmajor_u8s8_weights``."""
    if wgmma_arch(target):
        mod = rowmajor_u8s8_weights(mod)
    return common.prepare(mod, target)


@relax.expr_functor.mutator
class _RowMajorWeights(relax.PyExprMutator):
    """Repacks the weight (second argument) of every call_tir to one of ``kernels``."""

    def __init__(self, mod, kernels):
        super().__init__(mod)
        self.kernels = kernels

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != tvm.ir.Op.get("relax.call_tir") or call.args[0] not in self.kernels:
            return call
        args = list(call.args[1].fields)
        w = args[1]
        shape = [int(d) for d in w.ty.shape.values]          # [Np/16, K/4, 16, 4]
        t = self.builder_.emit(relax.op.permute_dims(w, [0, 2, 1, 3]))   # [Np/16, 16, K/4, 4]
        args[1] = self.builder_.emit(relax.op.reshape(t, shape))    # bytes: row-major [Np, K]
        return relax.Call(call.op, [call.args[0], relax.Tuple(args), *call.args[2:]],
                          call.attrs, call.ty_args)


def rowmajor_u8s8_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """The weight packing of the sm_90a wgmma route: every ``linear_u8s8`` call gets its
    weight as ``reshape(permute_dims(w, [0, 2, 1, 3]), w.shape)``, i.e. the VNNI
    [Np/16, K/4, 16, 4] bytes of lowering/pack.py rewritten to row-major [Np, K] bytes in a
    tensor of the same shape (pack.py ``vnni_to_rowmajor``), and the kernel is marked
    ``lowbit.w_layout = "rowmajor"`` (what makes the CUDA rule pick ``shell_u8s8_wgmma``).
    The weights are parameters, so LiftTransformParams (next) moves the repack into
    ``main_transform_params``: it runs once when the module is loaded, and params.bin stays
    the same for every target."""
    from lowbit.backends.tvm.kernels.cuda import arg_shapes

    # only shapes the wgmma shell takes (K % 16 == 0): any other linear_u8s8 goes to dlight,
    # which reads its weight as VNNI, so it must keep the VNNI bytes
    kernels = {gv for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
               and str(f.attrs.get(KERNEL_ATTR, "")) == "linear_u8s8"
               and arg_shapes(f)[0][1] % 16 == 0}
    if not kernels:
        return mod
    mutator = _RowMajorWeights(mod, kernels)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    out = mutator.builder_.get()
    for gv in kernels:
        out[gv] = out[gv].with_attr("lowbit.w_layout", "rowmajor")
    return out


def schedule(mod: tvm.IRModule, target: tvm.target.Target, tune=None, *, progress: bool = True
             ) -> tuple[tvm.IRModule, list[str]]:
    """Schedule every PrimFunc with the CUDA rules, the device kernels with the configurations
    of ``tune.db``'s table when tuning; returns the module and the tuned kernels used (none:
    configurations are not kernels)."""
    configs = read_config_table(tune.db) if tune is not None else None
    with kernel_configs(configs) if configs is not None else contextlib.nullcontext():
        mod = apply_rules(mod, target, default_rules())
    bare = [n for n, f in prim_funcs(mod).items() if "tirx.is_scheduled" not in f.attrs]
    if bare:  # a GPU kernel without thread bindings does not build
        raise RuntimeError(f"no CUDA schedule for kernel(s): {', '.join(bare)}")
    return mod, []


def lower_passes(target: tvm.target.Target) -> list:
    return cuda_pipeline.dataflow_lower_passes(target) + cuda_pipeline.finalize_passes(target)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build(mod: tvm.IRModule, target: tvm.target.Target, *, cuda_graph: bool = CUDA_GRAPH
          ) -> tvm.runtime.Executable:
    """Compile a scheduled module to a Relax VM executable with sm_XX machine code; with
    ``cuda_graph`` its static kernel sequences run as CUDA graphs (module docstring)."""
    load_cuda_backend(allow_stub=True)
    passes = tvm.transform.Sequential(lower_passes(target))
    cur = tvm.transform.PassContext.current()
    ctx = tvm.transform.PassContext(
        opt_level=cur.opt_level, required_pass=list(cur.required_pass),
        disabled_pass=list(cur.disabled_pass),
        config={**{k: v for k, v in cur.config.items()}, USE_CUDA_GRAPH: bool(cuda_graph)})
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), target, ctx:
        return tvm.compile(mod, target, relax_pipeline=passes)


def uses_cuda_graph(executable: tvm.runtime.Executable) -> bool:
    """Whether a built (or loaded) VM executable runs CUDA graphs (calls TVM's builtins)."""
    text = executable.as_text() if hasattr(executable, "as_text") else ""
    return any(b in text for b in CUDA_GRAPH_BUILTINS)


def fatbin_arches(path: str | os.PathLike) -> list[str]:
    """The sm_XX architectures of the CUDA machine code embedded in an exported library
    (``[]``: none, e.g. CUDA source or PTX only). Reads the ELF images in the file: each cubin
    is an ELF whose ``e_flags`` carry the arch; cuobjdump is not needed."""
    with open(path, "rb") as f:
        data = f.read()
    arches = set()
    for m in re.finditer(rb"\x7fELF\x02\x01\x01", data):
        head = data[m.start():m.start() + 64]
        if len(head) < 64:
            continue
        e_machine = int.from_bytes(head[18:20], "little")
        if e_machine != 190:  # EM_CUDA
            continue
        flags = int.from_bytes(head[48:52], "little")
        # CUDA 12+ cubins: arch in bits 8..15 of e_flags; older ones: the low byte
        sm = (flags >> 8) & 0xFF if (flags >> 8) & 0xFF else flags & 0xFF
        arches.add(f"sm_{sm}")
    return sorted(arches)


def build_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.runtime.Module:
    """Compile one scheduled (or shell) PrimFunc alone, as ``main`` (kernel tests, benchmarks)."""
    load_cuda_backend(allow_stub=True)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), target:
        return tvm.compile(mod, target)
