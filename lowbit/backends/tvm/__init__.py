"""TVM backend: quantized FX graphs or QDQ ONNX -> Relax with real integer kernels, for CPU
(llvm) and NVIDIA GPUs (cuda, sm_90 by default; docs/gpu.md).

    api.py             compile(graph, target, tune) -> CompiledModule (the stages, in order)
    legalize_quant.py  FX pass: q/dq + linear -> lowbit::linear_u8s8[_q|_peg] / linear_w4a16
    fuse_siblings.py   FX pass: int8 linears sharing an input -> one wide GEMM + split
    import_onnx.py     QDQ ONNX -> Relax, q/dq + matmul rewritten to the int8 kernel
    import_onnx_peg.py its PEG form (per-axis activations in contiguous groups -> group GEMM)
    pack.py, ops.py    weight packing ([N/16, K/4, 16, 4] for every ISA, int4 two per byte), ops
    import_relax.py    re-export + Relax import, converters for lowbit and q/dq ops
    kernels.py         the integer TIR kernels, their hand schedules, numpy references
    peg_kernel.py      the PEG group-wise int8 GEMM and its numerics (groups, corr, scale)
    isa/               the registry of instruction sets the int8 kernels are tensorized with:
                       dot4.py (AVX-512 VNNI, AVX-VNNI: vpdpbusd), madd.py (AVX-512BW, AVX2:
                       exact vpmaddwd pair form); one file + one entry per new set
    schedules.py       default CPU schedules for everything else (untuned builds)
    build.py           lift/legalize/fuse, schedule, lower, compile
    tune.py, check.py  MetaSchedule with a persistent per-target database; reference check
    tile_search.py     tuning by register tile for the pair-form int8 kernels
    target.py          "cpu" (host CPU + its cpuinfo flags) / LLVM CPU names / "cuda" / dicts
    input_bounds.py    token ids and other gathered inputs: ranges checked at the module boundary
    cuda_*.py, .cu     CUDA: build without a GPU, tensor-core / GEMV device kernels, tuning table
    runtime.py         CompiledModule, save, load (TVM runtime only)

Nothing is imported here: ``runtime`` must stay loadable without the TVM compiler.
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
