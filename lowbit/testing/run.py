"""Running a model once: torch modules, ``fx.GraphModule``s, plain callables, or ONNX models (a
path, an ``onnx.ModelProto`` or an ``onnx_ir.Model``) run by onnxruntime on CPU through
``lowbit.backends.onnxruntime.OrtRunner`` (lowbit's one ONNX runner).

Outputs are flattened (tuples, lists, dicts, Hugging Face ``ModelOutput``s) and named by their
path, e.g. ``last_hidden_state`` or ``1.0``; a lone tensor is ``output``; ONNX outputs keep their
graph names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
import torch.fx
import torch.utils._pytree as pytree

from lowbit.errors import VerifyError
from lowbit.warning_filters import copy_graph

__all__ = ["Outputs", "clone", "is_onnx", "onnx_proto", "run_model", "runner", "to_numpy"]

Outputs = list[tuple[str, np.ndarray]]


def run_model(model: Any, inputs: Any) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``inputs`` (a tensor, a tuple of positional inputs or a dict by
    name) under ``torch.no_grad``; return its flattened outputs by name, in output order.

    The model is run as it is, not copied.
    """
    return dict(runner(model)(inputs))


def runner(model: Any) -> Callable[[Any], Outputs]:
    if is_onnx(model):
        return _onnx_runner(model)
    if not callable(model):
        raise VerifyError(f"cannot run a {type(model).__name__}: expected a torch module, a "
                          f"callable or an ONNX model")
    return lambda inputs: _flatten_outputs(_call_torch(model, inputs))


def clone(model: Any) -> Any:
    return copy_graph(model) if isinstance(model, torch.nn.Module) else model


def _call_torch(fn: Callable, inputs: Any) -> Any:
    inputs = pytree.tree_map(_to_torch, inputs)
    with torch.no_grad():
        if isinstance(inputs, torch.Tensor):
            return fn(inputs)
        if isinstance(inputs, Mapping):
            args, kwargs = _fx_arguments(fn, inputs) if _is_exported(fn) else ((), inputs)
            return fn(*args, **kwargs)
        return fn(*inputs)


def _is_exported(fn: Any) -> bool:
    """An unlifted torch.export module: its in_spec says which inputs are positional."""
    return isinstance(fn, torch.fx.GraphModule) and getattr(fn, "_in_spec", None) is not None


def _fx_arguments(gm: torch.fx.GraphModule, inputs: Mapping[str, Any]) -> tuple[tuple, dict]:
    names = [str(n.target) for n in gm.graph.find_nodes(op="placeholder")]
    _check_names(names, inputs)
    return pytree.tree_unflatten([inputs[n] for n in names], gm._in_spec)


def _check_names(expected: Sequence[str], inputs: Mapping[str, Any]) -> None:
    if set(expected) != set(inputs):
        raise VerifyError(f"the model takes inputs {list(expected)}, got {list(inputs)}")


def _to_torch(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    return x.clone() if isinstance(x, torch.Tensor) else x


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _flatten_outputs(out: Any) -> Outputs:
    leaves, _ = pytree.tree_flatten_with_path(out)
    return [(_path_name(path), to_numpy(leaf)) for path, leaf in leaves
            if isinstance(leaf, (torch.Tensor, np.ndarray, int, float))]


def _path_name(path: tuple) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return ".".join(parts) or "output"


def is_onnx(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike, onnx.ModelProto, ir.Model))


def onnx_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.serde.serialize_model(model)
    _check_file(model)
    try:
        return onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError ... for one meaning
        raise VerifyError(f"{model}: not a readable ONNX model: {type(e).__name__}: {e}") from e


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise VerifyError(f"{path}: no such file")


def _onnx_runner(model: Any) -> Callable[[Any], Outputs]:
    # imported here: only ONNX checks need onnxruntime
    from lowbit.backends.onnxruntime import OrtRunner

    if isinstance(model, (str, os.PathLike)):
        _check_file(model)
        source: Any = os.fspath(model)
    else:
        source = onnx_proto(model).SerializeToString()
    try:
        # strict=False: onnxruntime's own defaults (all optimizations, no rewrite turned off),
        # as these checks have always run ONNX models
        session = OrtRunner(source, strict=False)
    except Exception as e:  # onnxruntime raises its own exception types
        name = source if isinstance(source, str) else "the ONNX model"
        raise VerifyError(f"{name}: onnxruntime cannot load it: {e}") from e
    in_names, out_names = session.input_names, session.output_names

    def run(inputs: Any) -> Outputs:
        return list(zip(out_names, session.run(_onnx_feed(inputs, in_names))))
    return run


def _onnx_feed(inputs: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        _check_names(names, inputs)
        return {n: to_numpy(inputs[n]) for n in names}
    values = [inputs] if isinstance(inputs, (torch.Tensor, np.ndarray)) else list(inputs)
    if len(values) != len(names):
        raise VerifyError(f"the ONNX model takes {len(names)} inputs {list(names)}, "
                          f"got {len(values)}")
    return {n: to_numpy(v) for n, v in zip(names, values)}
