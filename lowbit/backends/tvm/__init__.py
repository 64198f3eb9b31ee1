"""TVM backend: quantized FX graphs or QDQ ONNX -> Relax with real integer kernels, for CPU
(llvm) and NVIDIA GPUs (cuda, sm_90 by default; docs/gpu.md). Organised by role:

    api.py          compile(graph, target, tune) -> CompiledModule: picks the frontend and the
                    target's pipeline (once), runs its stages
    frontends/      a model -> Relax IRModule with kernels as call_tir, weights as parameters
      fx.py           FX GraphModule (after the lowering passes): re-export + Relax import
      onnx.py         QDQ ONNX: read, check, import; onnx_qdq.py: its QDQ MatMuls -> int8 kernels
    lowering/       quantized patterns -> kernels, planned once for both frontends
      int8.py         corrections and scales of every int8 kernel (W8A8 = one PEG group)
      peg.py          the PEG planner (contiguous groups -> group GEMM arrays, or a reason)
      legalize.py     FX pass: q/dq + linear -> lowbit::linear_u8s8[_q|_peg] / linear_w4a16
      fuse_siblings.py  FX pass: int8 linears sharing an input -> one wide GEMM + split
      pack.py, ops.py   weight packing ([N/16, K/4, 16, 4], int4 two per byte), lowbit:: ops
    kernels/        one registry of kernel kind x target kind (registry.py)
      defs.py         the TIR compute definitions (the same for every target), references.py
      cpu.py, isa/    CPU hand schedules over the instruction-set registry (VNNI, AVX-VNNI,
                      AVX-512BW, AVX2); one file + one entry per new set
      peg.py          the PEG group-wise int8 GEMM; cuda.py, .cu: CUDA device kernels
    schedules/      rule sets in the dlight style (a rule returns None for a kernel not its own):
                    base.py (target gating, registry rule, guard), cpu.py, cuda.py
    pipelines/      per-target stages, like TVM's relax/backend/<target>/pipeline.py: cpu.py,
                    cuda.py (same names: fx_passes, prepare, schedule, lower_passes, build),
                    common.py (shared Relax passes)
    tune.py, check.py  MetaSchedule with a persistent per-target database; reference check
    tile_search.py  tuning by register tile for the pair-form int8 kernels
    target.py       "cpu" (host CPU + its cpuinfo flags) / LLVM CPU names / "cuda" / dicts
    input_bounds.py token ids and other gathered inputs: ranges checked at the module boundary
    runtime.py      CompiledModule, save, load (TVM runtime only; with cuda_env.py, which loads
                    the CUDA backend by hand, also without a GPU)

Layers, each importing only those below it: api -> pipelines -> frontends, tune -> lowering,
schedules, check, tile_search -> kernels -> target; runtime.py and cuda_env.py import none of
them. Nothing is imported here: ``runtime`` must stay loadable without the TVM compiler.
"""

import os as _os


def _default_cpu_threads() -> None:
    """TVM's CPU thread pool defaults to half the logical cores (it assumes two hyper-threads
    per core): on a 2-vCPU machine a compiled model ran on ONE thread (MiniLM W8A8 14.5 ms
    instead of 8.3 ms). Unless the user chose (TVM_NUM_THREADS or OMP_NUM_THREADS), use every
    core this process may run on. Set before TVM's pool starts (its first parallel call)."""
    if "TVM_NUM_THREADS" in _os.environ or "OMP_NUM_THREADS" in _os.environ:
        return
    try:
        cores = len(_os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = _os.cpu_count() or 1
    _os.environ["TVM_NUM_THREADS"] = str(cores)


_default_cpu_threads()
