"""Per-target pipelines, the way TVM's ``relax/backend/<target>/pipeline.py`` are written: one
module per target kind with the same stage names, chosen once by ``pipeline_for``.

    common.py   the stages every target shares (prepare: lift, legalize, fuse)
    cpu.py      LLVM:  fx_passes, ONNX_INT8, kernel_family, prepare, schedule (tune + CPU
                rules), lower_passes, build
    cuda.py     CUDA:  the same names (GPU rules, kernel configurations, nvcc build without a
                GPU), plus fatbin_arches and build_kernel

``prepare``, ``schedule`` and ``build`` here run the stage of ``target``'s pipeline.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["PIPELINES", "build", "pipeline_for", "prepare", "schedule"]

PIPELINES = {"llvm": "cpu", "cuda": "cuda"}   # TVM target kind -> pipeline module


def pipeline_for(target) -> ModuleType:
    """The pipeline module of ``target`` (a resolved ``tvm.target.Target``; target.py)."""
    name = PIPELINES.get(target.kind.name)
    if name is None:
        raise ValueError(f"no lowbit pipeline for target kind {target.kind.name!r} (kinds "
                         f"{sorted(PIPELINES)})")
    return importlib.import_module(f"{__name__}.{name}")


def prepare(mod, target):
    return pipeline_for(target).prepare(mod, target)


def schedule(mod, target, tune=None, *, progress: bool = True):
    """``target``'s schedule stage; returns the scheduled module."""
    return pipeline_for(target).schedule(mod, target, tune, progress=progress)[0]


def build(mod, target):
    return pipeline_for(target).build(mod, target)
