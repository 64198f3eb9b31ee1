"""Load TVM's CUDA backend by hand: on a build machine without a GPU, and with the runtime only.

TVM 0.27 loads ``libtvm_runtime_cuda.so`` at ``import tvm`` and silently gives up when
``libcuda.so.1`` (the driver) is missing. Without it, a CUDA build "succeeds" but embeds CUDA
source instead of machine code (``ffi.Module.create.cuda`` is what wraps the cubin). With
``TVM_USE_RUNTIME_LIB=1`` the backend is never loaded at all. ``load_cuda_backend`` fixes both:

    libcudart.so.13   from the dynamic loader's path, the pip ``nvidia`` packages or
                      /usr/local/cuda*, loaded RTLD_GLOBAL
    libcuda.so.1      the real driver; only when there is none and ``allow_stub`` (building), a
                      stub: a few exported symbols that return CUDA_ERROR_NO_DEVICE, compiled
                      once with the C compiler into ``~/.cache/lowbit/cuda_stub``
    libtvm_runtime_cuda.so   from the tvm package, registering the CUDA module loader

Nothing from the TVM compiler is imported here (runtime.py imports this module).
"""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["cuda_backend_state", "load_cuda_backend"]

_STATE: dict[str, str] = {}

# every driver symbol libtvm_runtime_cuda.so imports (nm -D --undefined-only)
_DRIVER_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuLaunchKernelEx",
                   "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                   "cuTensorMapEncodeTiled", "cuInit", "cuDriverGetVersion", "cuGetProcAddress",
                   "cuGetProcAddress_v2", "cuDeviceGet", "cuDeviceGetCount",
                   "cuDeviceGetAttribute", "cuCtxGetCurrent", "cuGetExportTable")
_STUB_C = "\n".join(
    ["/* lowbit: stand-in for libcuda.so.1 on machines without a GPU (build only) */",
     "static const char *msg = \"no CUDA driver (lowbit build stub)\";",
     "int cuGetErrorName(int e, const char **s) { (void)e; *s = msg; return 0; }",
     "int cuGetErrorString(int e, const char **s) { (void)e; *s = msg; return 0; }"]
    + [f"int {s}(void) {{ return 100; }}" for s in _DRIVER_SYMBOLS]) + "\n"


def cuda_backend_state() -> str | None:
    """"driver" (real libcuda), "stub" (build stub), or None (not loaded by us)."""
    return _STATE.get("libcuda")


def _try_load(path: str, mode: int = ctypes.RTLD_GLOBAL) -> bool:
    try:
        ctypes.CDLL(path, mode=mode)
        return True
    except OSError:
        return False


def _cudart_candidates() -> list[str]:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots |= {p for p in sys.path if p.endswith("site-packages")}
    found = ["libcudart.so.13"]
    for root in sorted(roots):
        found += sorted(glob.glob(os.path.join(root, "nvidia", "**", "libcudart.so.13"),
                                  recursive=True))
    found += sorted(glob.glob("/usr/local/cuda*/lib*/libcudart.so.13"))
    found += sorted(glob.glob("/usr/local/cuda*/targets/*/lib/libcudart.so.13"))
    return found


def _stub_path() -> Path:
    folder = Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit")) / "cuda_stub"
    lib = folder / "libcuda.so.1"
    src = folder / "stub.c"
    if lib.is_file() and src.is_file() and src.read_text() == _STUB_C:
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    src.write_text(_STUB_C)
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(lib),
                    str(src)], check=True, capture_output=True)
    return lib


def load_cuda_backend(allow_stub: bool = False) -> str:
    """Make TVM's CUDA runtime available in this process (see module docstring).

    Returns "driver" or "stub". Raises RuntimeError naming what is missing.
    """
    if "libcuda" in _STATE:
        return _STATE["libcuda"]
    from tvm.base import _LOADED_LIBS  # the runtime part of tvm only

    if not any(_try_load(p) for p in _cudart_candidates()):
        raise RuntimeError("libcudart.so.13 not found (install nvidia-cuda-runtime or the CUDA "
                           "toolkit 13, or put it on LD_LIBRARY_PATH)")
    if _try_load("libcuda.so.1"):
        state = "driver"
    elif allow_stub:
        if not _try_load(str(_stub_path())):
            raise RuntimeError("could not load the libcuda build stub")
        state = "stub"
    else:
        raise RuntimeError("libcuda.so.1 (the NVIDIA driver) not found: this machine cannot run "
                           "CUDA modules")
    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        lib = runtime_dir / "libtvm_runtime_cuda.so"
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise RuntimeError(f"cannot load {lib}: {e}") from e
    _STATE["libcuda"] = state
    return state
