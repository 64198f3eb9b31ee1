"""FoldChannelScales (FX): fold explicit channel-scale pairs into the parameters around them.

The algorithm, its math and its refusals are written once over the graph view
(``lowbit.passes.fold_channel_scales``); here is what only torch.fx has. The pair, at a linear
input ``y`` (last axis C), reads one parameter ``a`` (shape [C], a get_attr named
``lowbit_scale_*``)::

    y_s = y / a          (aten.div.Tensor)     the quantizer, if any, sits here: Q(y / a)
    y'  = y_s * a        (aten.mul.Tensor)     read by linears L_k(y') = y' W_k^T + b_k

Consumers are ``aten.linear`` ([out, in]: columns j * a_j) and HF Conv1D's ``aten.addmm`` /
``mm`` ([in, out]: rows), read directly or through a weight fake-quant; producers LayerNorm,
RMSNorm (fused or HF decomposed, Gemma's ``1 + w``) and linears. Folding copies into the
parameters in place (a tied alias sees it), removes the pair and the parameter ``a``, and
recompiles: the parameter count is back to the model's.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx, nn

from lowbit.passes import fold_channel_scales as _fold
from lowbit.passes.reports import SCALE_PREFIX, ScaleReport, scale_name  # re-exported
from lowbit.passes.view.fx import FxView, linear_weight  # linear_weight: re-exported
from lowbit.passes.view.fx_graph import param_names, tensor_of

__all__ = [
    "SCALE_PREFIX",
    "FoldChannelScales",
    "ScaleReport",
    "insert_scale_pair",
    "linear_weight",
    "producer_of",
    "scale_name",
    "scale_pairs",
    "shared_reason",
]


def scale_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node | None]]:
    """(div, mul) per scale parameter; mul is None for a kept (explicit) ``y / a``."""
    return _fold.scale_pairs(FxView(gm))


def shared_reason(gm: fx.GraphModule, attr: fx.Node, owners: set) -> str | None:
    """Why the parameter read by ``attr`` may not be rewritten for ``owners`` alone; its
    readers are the nodes reading its get_attrs (through fake-quants, not casts: PEG folding
    names the cast as the owner). Scale folding uses ``FxView.param_readers`` instead."""
    t = tensor_of(gm, attr)
    names = param_names(gm).get(id(t), [])
    if len(names) > 1:
        return f"{attr.target} is tied ({', '.join(names)})"
    view = FxView(gm)
    readers = [u for n in gm.graph.nodes if n.op == "get_attr" and tensor_of(gm, n) is t
               for u in _fold.readers(view, n)]
    if others := sorted({u.name for u in readers if u not in owners}):
        return f"{attr.target} is also read by {', '.join(others)}"
    return None


def producer_of(gm: fx.GraphModule, y: fx.Node, norms: dict,
                allowed: set) -> tuple[str, object, str | None]:
    """(kind, ref, refusal) for the tensor ``y`` whose only readers may be ``allowed``; norms
    as ``lowbit.passes.fx.spot.all_norms`` lists them (``lowbit.passes.fold_channel_scales``)."""
    return _fold.producer_of(FxView(gm), y, norms, allowed)


@dataclasses.dataclass(frozen=True)
class FoldChannelScales(_fold.FoldChannelScales):
    """Fold every scale pair of a GraphModule (``lowbit.passes.fold_channel_scales``: what it
    handles and refuses). ``partial=True`` keeps ``y / a`` explicit where the producer cannot
    take ``1/a``."""

    in_place = True

    def _finish(self, gm: fx.GraphModule, folded: list[str]) -> None:
        for n in list(gm.graph.nodes):
            if n.op == "get_attr" and str(n.target).startswith(SCALE_PREFIX) and not n.users:
                gm.graph.erase_node(n)
        for name in [p for p, _ in gm.named_parameters() if p.startswith(SCALE_PREFIX)]:
            if not any(n.op == "get_attr" and n.target == name for n in gm.graph.nodes):
                delattr(gm, name)
        gm.graph.lint()
        gm.recompile()


def insert_scale_pair(gm: fx.GraphModule, y: fx.Node, readers: set, name: str,
                      a: torch.Tensor, *, learnable: bool = False) -> str:
    """Insert ``(y / a) * a`` for ``readers`` of ``y`` with a new parameter ``a``; returns its
    name (``lowbit_scale_<name>``)."""
    base = scale_name(name)
    attr_name, i = base, 0
    while hasattr(gm, attr_name):
        i += 1
        attr_name = f"{base}_{i}"
    gm.register_parameter(attr_name, nn.Parameter(a, requires_grad=learnable))
    g = gm.graph
    with g.inserting_after(y):
        attr = g.get_attr(attr_name)
    with g.inserting_after(attr):
        div = g.call_function(torch.ops.aten.div.Tensor, (y, attr))
    with g.inserting_after(div):
        mul = g.call_function(torch.ops.aten.mul.Tensor, (div, attr))
    for n in (div, mul):
        if "val" in y.meta:
            n.meta["val"] = y.meta["val"]
    for u in readers:
        u.replace_input_with(y, mul)
    return attr_name
