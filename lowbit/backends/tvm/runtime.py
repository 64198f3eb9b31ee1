"""CompiledModule: run a compiled model; ``save(dir)`` / ``load(dir)``.

Only the TVM runtime is needed here (nothing from the compiler, no torch): ``load`` works with
``TVM_USE_RUNTIME_LIB=1``, which imports tvm without its 259 MB compiler library. A saved
module is a folder::

    model.so      the Relax VM executable (kernels, ``main``, ``main_transform_params``)
    params.bin    the weights as the graph holds them (packed int8/int4, fp32), TVM param dict
    meta.json     input names/shapes/dtypes, index bounds, output names, target, versions

Weights stay out of ``model.so``; at load ``main_transform_params`` runs once (fp32 weight
transposes and similar) and its results are what every call passes to ``main``.

Calls take numpy arrays or torch tensors, positionally in input order or by name. Inputs of a
different dtype of the same kind (int32 ids for int64) are cast; shapes must match the compiled
(static) shapes. Inputs that index a table (token ids: ``meta["input_bounds"]``, found by
input_bounds.py at compile) must lie in its ``[min, max]``; all of this is checked on the host
before any device work, so a bad input raises ``RuntimeInputError`` naming it, never reads out of
bounds. Results come back as numpy arrays, or as torch tensors when any input was a torch
tensor: one output alone, several as a namedtuple when their names allow it (HF outputs:
``out.last_hidden_state``), else a tuple.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from lowbit.backends.tvm.cuda_env import load_cuda_backend
from lowbit.errors import LowbitError, RuntimeInputError
from lowbit.io import replace_folder
from lowbit.warning_filters import quiet

__all__ = ["CompiledModule", "RuntimeInputError", "load"]

FORMAT = 1


def check_bounds(a: np.ndarray, name: str, bounds: dict) -> None:
    """Raise ``RuntimeInputError`` unless every value of input ``name`` lies in
    ``[bounds["min"], bounds["max"]]`` (NaN included: it is in no range)."""
    lo, hi = bounds["min"], bounds["max"]
    if a.size == 0 or (a.min() >= lo and a.max() <= hi):    # NaN fails both comparisons
        return
    bad = ~((a >= lo) & (a <= hi))
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    v = a[where]
    raise RuntimeInputError(
        f"input {name!r}: value {v.item()!r} at position {list(where)} is outside the valid "
        f"range [{lo}, {hi}] ({int(bad.sum())} of {a.size} values are); it indexes "
        f"{bounds.get('table', 'a table')!r}")


def check_host_cpu(meta: dict) -> None:
    """Refuse to run a CPU module built for instructions this host lacks (``meta["cpu_flags"]``,
    recorded at compile): it would die with SIGILL. Hosts whose flags are unreadable, CUDA
    modules and modules saved before the flags were recorded are not checked."""
    from lowbit.hostcpu import host_x86_features

    have = host_x86_features()
    if target_kind(meta) != "llvm" or not have:
        return
    missing = [f for f in meta.get("cpu_flags", []) if f not in have]
    if missing:
        raise LowbitError(f"this module was compiled for {meta.get('target')} "
                          f"(int8 kernels: {meta.get('kernel_family')}), which uses "
                          f"{', '.join(missing)}; this CPU does not have "
                          f"{'it' if len(missing) == 1 else 'them'}. Compile it for this "
                          f"machine (target='cpu') or for a CPU it can run (e.g. 'x86-64-v3').")


def target_kind(meta: dict) -> str:
    """The TVM target kind ("llvm", "cuda") a saved or compiled module is for."""
    try:
        return str(json.loads(meta["target"])["kind"])
    except (KeyError, TypeError, ValueError):
        return "cuda" if '"kind":"cuda"' in str(meta.get("target", "")) else "llvm"


class CompiledModule:
    """A compiled model on the TVM Relax VM (see module docstring)."""

    def __init__(self, executable: Any, params: list, meta: dict, *, device=None):
        self.meta = meta
        self.device = device
        self.executable = executable
        self._raw_params = params
        self._vm = None      # made on first use: a CUDA module compiles on a machine without a GPU
        self._params: list = []
        names = meta["outputs"]
        self._out_type = (collections.namedtuple("Outputs", names)
                          if len(names) > 1 and all(n.isidentifier() for n in names)
                          and len(set(names)) == len(names) else None)

    @property
    def target_kind(self) -> str:
        """"cuda" or "llvm" (from the target the module was compiled for)."""
        return target_kind(self.meta)

    @property
    def cuda_graph(self) -> bool:
        """Whether the kernel launches run as CUDA graphs (``lowbit.compile(...,
        cuda_graph=)``; modules saved before the option existed: no). The graphs are captured
        on the first call, on this module's VM, and replayed after: the VM's static buffers and
        the weights keep their addresses for its lifetime, the inputs are copied into static
        buffers by kernels outside the graphs, the outputs are new tensors each call."""
        return bool(self.meta.get("cuda_graph", False))

    def _ready(self) -> VirtualMachine:
        if self._vm is not None:
            return self._vm
        check_host_cpu(self.meta)
        if self.device is None:
            if self.target_kind == "cuda":
                load_cuda_backend()
                self.device = tvm.cuda(0)
            else:
                self.device = tvm.cpu()
        self._vm = VirtualMachine(self.executable, self.device)
        dev_params = [tvm.runtime.tensor(p.numpy() if isinstance(p, tvm.runtime.Tensor) else p,
                                         self.device)
                      if not (isinstance(p, tvm.runtime.Tensor) and p.device == self.device)
                      else p for p in self._raw_params]
        if "main_transform_params" in self.meta.get("functions", ["main_transform_params"]):
            self._params = list(self._vm["main_transform_params"](dev_params))
        else:
            self._params = dev_params
        return self._vm

    # ---- introspection -----------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.meta["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return list(self.meta["outputs"])

    def __repr__(self) -> str:
        ins = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in self.meta["inputs"])
        return f"CompiledModule({ins}) -> {self.output_names} on {self.meta['target']}"

    # ---- calling -----------------------------------------------------------------------------
    def _bind(self, args: tuple, kwargs: dict) -> list[Any]:
        specs = self.meta["inputs"]
        if len(args) > len(specs):
            raise RuntimeInputError(f"takes {len(specs)} input(s) {self.input_names}, got "
                                    f"{len(args)} positional")
        values: dict[str, Any] = {s["name"]: a for s, a in zip(specs, args)}
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise RuntimeInputError(f"unknown input {k!r}; inputs: {self.input_names}")
            if k in values:
                raise RuntimeInputError(f"input {k!r} given twice")
            values[k] = v
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise RuntimeInputError(f"missing input(s) {missing}; inputs: {self.input_names}")
        return [values[s["name"]] for s in specs]

    def _host(self, x: Any, spec: dict) -> np.ndarray:
        """``x`` as a contiguous numpy array of the compiled dtype, after every check (shape,
        dtype kind, index bounds); nothing here touches the device."""
        if hasattr(x, "detach") and hasattr(x, "numpy"):  # torch.Tensor, without importing torch
            x = x.detach().cpu().numpy()
        a = np.asarray(x)
        want = np.dtype(spec["dtype"])
        if list(a.shape) != list(spec["shape"]):
            raise RuntimeInputError(f"input {spec['name']!r}: shape {list(a.shape)} but the module "
                                    f"was compiled for {spec['shape']} (static shapes: compile "
                                    f"again with example inputs of this shape)")
        if a.dtype != want and a.dtype.kind != want.kind and not (a.dtype.kind in "iub"
                                                                  and want.kind in "iub"):
            raise RuntimeInputError(f"input {spec['name']!r}: dtype {a.dtype}, expected {want}")
        bounds = self.meta.get("input_bounds", {}).get(spec["name"])
        if bounds is not None:
            check_bounds(a, spec["name"], bounds)      # before the cast, which may wrap
        return np.ascontiguousarray(a.astype(want, copy=False))

    def _to_device(self, x: Any, spec: dict) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(self._host(x, spec), self.device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = self._bind(args, kwargs)
        as_torch = any(type(v).__module__.startswith("torch") for v in values)
        host = [self._host(v, s) for v, s in zip(values, self.meta["inputs"])]
        vm = self._ready()
        dev_in = [tvm.runtime.tensor(a, self.device) for a in host]
        out = vm["main"](*dev_in, *self._params)
        outs = [o.numpy() for o in ([out] if isinstance(out, tvm.runtime.Tensor) else out)]
        if as_torch:
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        if len(outs) == 1:
            return outs[0]
        return self._out_type(*outs) if self._out_type else tuple(outs)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the module to folder ``path``; returns the folder.

        Atomic: everything is written to a temporary folder beside ``path`` first, which then
        takes its place, so an interrupted save never leaves a half-written module. An
        existing folder is replaced only if it holds a saved module (``meta.json``); any other
        non-empty folder is refused rather than deleted."""
        import shutil
        import tempfile

        folder = Path(path)
        if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                        and not (folder / "meta.json").is_file())):
            raise LowbitError(f"{folder} exists and is not a saved lowbit module: not "
                              f"overwriting it")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with quiet("tvm-vm-scope-saving"):
                self.executable.export_library(str(tmp / "model.so"))
            params = {f"p{i}": (p if isinstance(p, tvm.runtime.Tensor)
                                else tvm.runtime.tensor(p))
                      for i, p in enumerate(self._raw_params)}  # host copies, any device
            tvm.runtime.save_param_dict_to_file(params, str(tmp / "params.bin"))
            meta = dict(self.meta, format=FORMAT, num_params=len(self._raw_params))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            replace_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder


def load(path: str | os.PathLike, *, device=None) -> CompiledModule:
    """Load a folder written by ``CompiledModule.save`` (TVM runtime only)."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no meta.json (not a saved lowbit CompiledModule)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise LowbitError(f"{folder}: format {meta.get('format')!r}, this lowbit reads {FORMAT}")
    if target_kind(meta) == "cuda" and device is None:
        load_cuda_backend()  # before loading: the library holds a CUDA module
    lib = tvm.runtime.load_module(str(folder / "model.so"))
    raw = tvm.runtime.load_param_dict_from_file(str(folder / "params.bin"))
    params = [raw[f"p{i}"] for i in range(meta["num_params"])]
    return CompiledModule(lib, params, meta, device=device)
