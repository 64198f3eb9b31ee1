"""capture(): a torch model -> torch.fx GraphModule through torch.export.

The graph keeps high-level ATen ops (``aten.linear``, ``aten.layer_norm``,
``aten.scaled_dot_product_attention``), so spotting reads structure directly, and parameters
keep their original dotted names (``encoder.layer.0.attention.self.query.weight``), so every
quantized tensor is traceable to the module it came from. Parameters are copied: passes on the
captured graph never touch the user's model.

Hugging Face decoders come with ``config.use_cache = True`` and then return a KV-cache object
torch.export cannot hold. ``capture`` sets ``use_cache = False`` on every config of the model
(its own, its submodules', nested ``text_config``s) for the duration of the export and puts each
back exactly as it was, so the graph computes the logits without a cache and the user's model
and config are left as they came. A ``use_cache`` given in the example inputs is respected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.fx

from lowbit.errors import CaptureError
from lowbit.warning_filters import copy_graph

__all__ = ["capture", "output_names", "to_device"]

log = logging.getLogger("lowbit.capture")

_HINTS = (
    "what to try: call model.eval() first; pass example inputs exactly as forward() takes them "
    "(a tuple, or a dict of keyword arguments); replace data-dependent Python control flow "
    "(`if x.sum() > 0`) with torch.where/torch.cond; give dynamic_shapes (or dynamic=True) when "
    "calibration batches differ in shape from the example"
)


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        return tuple(example_inputs), {}
    raise CaptureError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}"
    )


def _auto_dynamic(args: tuple, kwargs: dict) -> Any:
    def dims(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return {i: torch.export.Dim.AUTO for i in range(x.dim())}
        return None
    if kwargs:
        return {k: dims(v) for k, v in kwargs.items()}
    return tuple(dims(a) for a in args)


def _detach_state(gm: torch.nn.Module) -> None:
    """ep.module() reuses the user's Parameter objects: give the graph its own copies."""
    copies: dict[int, torch.nn.Parameter] = {}  # keeps tied weights tied
    with torch.no_grad():
        for name, p in list(gm.named_parameters(remove_duplicate=False)):
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            if id(p) not in copies:
                copies[id(p)] = torch.nn.Parameter(p.detach().clone(), p.requires_grad)
            setattr(owner, attr, copies[id(p)])
        for name, b in list(gm.named_buffers(remove_duplicate=False)):
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            persistent = attr not in getattr(owner, "_non_persistent_buffers_set", set())
            owner.register_buffer(attr, b.detach().clone(), persistent=persistent)


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every Hugging Face config object of ``model`` and its submodules, nested ones included
    (``text_config`` of a multimodal config), each once."""
    seen: dict[int, Any] = {}
    todo = [getattr(m, "config", None) for m in model.modules()]
    while todo:
        cfg = todo.pop()
        if id(cfg) in seen or not _is_hf_config(cfg):
            continue
        seen[id(cfg)] = cfg
        todo += [v for v in vars(cfg).values() if _is_hf_config(v)]
    return list(seen.values())


def _is_hf_config(x: Any) -> bool:
    return hasattr(x, "to_dict") and hasattr(x, "model_type")


@contextlib.contextmanager
def _without_kv_cache(model: torch.nn.Module, kwargs: dict) -> Iterator[None]:
    """``use_cache = False`` on every config that has it on, restored exactly afterwards
    (an attribute that was the class default is removed again, not left set)."""
    saved = []
    if "use_cache" not in kwargs:
        for cfg in _configs(model):
            if getattr(cfg, "use_cache", None):
                saved.append((cfg, "use_cache" in vars(cfg), cfg.use_cache))
                cfg.use_cache = False
    if saved:
        log.info("capturing %s without its KV cache (use_cache=False during the export; the "
                 "model's config is restored after)", type(model).__name__)
    try:
        yield
    finally:
        for cfg, own, value in saved:
            if own:
                cfg.use_cache = value
            else:
                with contextlib.suppress(AttributeError):
                    delattr(cfg, "use_cache")


def capture(
    model: torch.nn.Module,
    example_inputs: Any,
    dynamic_shapes: Any = None,
    *,
    dynamic: bool = False,
    strict: bool = False,
) -> torch.fx.GraphModule:
    """Export ``model`` with torch.export and return its FX GraphModule.

    Args:
        model: the eager model (put it in eval mode for inference graphs).
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        dynamic_shapes: passed to ``torch.export.export`` as is.
        dynamic: shorthand that marks every dimension of every tensor input dynamic
            (``Dim.AUTO``); ignored when ``dynamic_shapes`` is given.
        strict: torch.export's strict (TorchDynamo) mode.

    Raises:
        CaptureError: the model cannot be exported; the message carries torch's reason.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture() takes a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = _split_inputs(example_inputs)
    if dynamic_shapes is None and dynamic:
        dynamic_shapes = _auto_dynamic(args, kwargs)
    if model.training:
        log.warning("capturing %s in training mode (dropout active); call model.eval() for "
                    "inference graphs", type(model).__name__)
    try:
        with _without_kv_cache(model, kwargs):
            ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes,
                                     strict=strict)
    except Exception as e:  # torch raises many types; all mean "cannot be exported"
        reason = str(e).strip().splitlines()
        reason = "\n    ".join(reason[:12]) if reason else type(e).__name__
        hints = _HINTS
        if "Cache" in str(e):
            hints = ("what to try: the model returns a KV-cache object; pass use_cache=False "
                     "in the example inputs, or set the config's use_cache to False")
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {type(e).__name__}:\n"
            f"    {reason}\n  {hints}"
        ) from e
    gm = ep.module()
    _detach_state(gm)
    gm.meta = getattr(gm, "meta", {})
    gm.meta["lowbit_source"] = type(model).__name__
    # Kept so later stages (ONNX export, compile) can re-trace without asking again.
    gm.meta["lowbit_example_inputs"] = (args, kwargs)
    gm.meta["lowbit_dynamic_shapes"] = dynamic_shapes
    return gm


def _on(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.device):
        return device
    if isinstance(value, (list, tuple)):
        return type(value)(_on(v, device) for v in value)
    return value


def to_device(gm: torch.fx.GraphModule, device: str | torch.device, *,
              inplace: bool = False) -> torch.fx.GraphModule:
    """A captured graph on ``device`` (e.g. "cuda"): its parameters and buffers moved, and the
    devices torch.export recorded in the graph (``arange(..., device=cpu)``, ``to(cpu)``, the
    metadata asserts) rewritten, so ``gm.to("cuda")`` alone is not enough. A copy unless
    ``inplace``."""
    device = torch.device(device)
    gm = gm if inplace else copy_graph(gm)
    gm.to(device)
    for node in gm.graph.nodes:
        node.args = _on(node.args, device)
        node.kwargs = {k: _on(v, device) for k, v in node.kwargs.items()}
    gm.recompile()
    return gm


def output_names(out_spec: Any) -> list[str]:
    """The names of a captured graph's outputs, in order, from the output structure
    torch.export recorded (``gm._out_spec``): a field path where the output is a mapping or a
    Hugging Face ``ModelOutput`` (``last_hidden_state``, ``logits``), an index path (``0``,
    ``1.0``) in a tuple, ``output`` for a lone tensor; [] without a spec."""
    import torch.utils._pytree as pytree

    if out_spec is None:
        return []
    dummy = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
    leaves, _ = pytree.tree_flatten_with_path(dummy)
    return [".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                     for k in path) or "output" for path, _ in leaves]
