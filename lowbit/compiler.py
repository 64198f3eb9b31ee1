"""Public entry of the TVM backend: ``compile``, ``Tune``, ``load`` (to be re-exported as
``lowbit.compile`` etc. by lowbit/__init__.py).

    mod = compile(qgm, target="cpu", tune=Tune(trials=256, db="tuning/"))
    out = mod(input_ids, attention_mask)            # numpy or torch, positional or by name
    mod.save("model_dir"); mod2 = load("model_dir") # load needs only the TVM runtime

See lowbit/backends/tvm/api.py for the stages and lowbit/backends/tvm/runtime.py for calling
conventions. ``load`` is imported lazily so that loading never pulls in the TVM compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowbit.backends.tvm.runtime import CompiledModule
    from lowbit.backends.tvm.tune import Tune

__all__ = ["CompiledModule", "Tune", "compile", "load"]


def compile(graph: Any, target: Any = "cpu", tune: Any = None, **kwargs: Any):
    """Compile a quantized (or float) graph for ``target``; see ``backends.tvm.api.compile``."""
    from lowbit.backends.tvm.api import compile as _compile

    return _compile(graph, target, tune, **kwargs)


def load(path: Any, **kwargs: Any):
    """Load a module saved with ``CompiledModule.save`` (TVM runtime only)."""
    from lowbit.backends.tvm.runtime import load as _load

    return _load(path, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Tune":
        from lowbit.backends.tvm.tune import Tune

        return Tune
    if name == "CompiledModule":
        from lowbit.backends.tvm.runtime import CompiledModule

        return CompiledModule
    raise AttributeError(name)
