"""Registering new tensors on a GraphModule (the operands a rewrite adds)."""

from __future__ import annotations

import torch
from torch import fx, nn

__all__ = ["attach", "owner_of"]


def owner_of(gm: fx.GraphModule, dotted: str) -> tuple[nn.Module, str]:
    """The module holding ``dotted`` and the attribute name there (``gm`` and the dots made
    underscores where the module path does not exist)."""
    path, _, attr = dotted.rpartition(".")
    try:
        return (gm.get_submodule(path) if path else gm), attr
    except AttributeError:            # flat parameter names: keep the dotted name readable
        return gm, dotted.replace(".", "_")


def attach(gm: fx.GraphModule, dotted: str, value: torch.Tensor, *, param: bool) -> str:
    """Register ``value`` on the module of ``dotted`` (``"encoder.layer.0.bcq_planes"``) under
    a free name (``_1``, ``_2`` .. appended when taken), as a frozen parameter (``param``) or
    a buffer; returns its target for a ``get_attr`` node. Where the module path does not exist
    (flat parameter names) it goes on ``gm`` itself, the dots made underscores."""
    owner, attr = owner_of(gm, dotted)
    base, i = attr, 0
    while hasattr(owner, attr):
        i += 1
        attr = f"{base}_{i}"
    if param:
        owner.register_parameter(attr, nn.Parameter(value, requires_grad=False))
    else:
        owner.register_buffer(attr, value)
    return dotted.rpartition(".")[0] + "." + attr if owner is not gm else attr
