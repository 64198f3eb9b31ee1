"""QuantizeBCQ (FX): each linear of a weight-only BCQ recipe becomes one ``lowbit::bcq_linear``.

    linear(x, W, b)        ->  bcq_linear(x, planes, alpha, offset, b)
    addmm(b, x, W_in_out)  ->  bcq_linear(x, planes, alpha, offset, b)
    mm / matmul(x, W)      ->  bcq_linear(x, planes, alpha, offset, None)

The fits come from ``plan_bcq`` (written once for both IRs, ``lowbit.passes.bcq``). Per linear,
beside its weight's owner module: ``<linear>.bcq_planes`` (uint8 [q, N, K/8], a buffer),
``<linear>.bcq_alpha`` ([N, G, q]) and ``<linear>.bcq_offset`` ([N, G], with ``BCQ(offset=True)``)
as parameters with ``requires_grad=False`` (AlphaTuning switches the alphas on, lowbit.train).
The float weight is deleted unless another op still reads it (a tied weight). The report of
fits is kept in ``gm.meta["lowbit_bcq"]``. The pass converts every linear of the recipe in one
run; a graph holding ``bcq_linear`` ops already is left alone (``modified=False``): spotting
cannot read BCQ layers as linears, so mix bit widths with one recipe per run on the float graph
and ``Recipe.ignore``, not by converting twice.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx

from lowbit.config import Recipe
from lowbit.passes.bcq import BCQSite, bcq_spec, plan_bcq
from lowbit.passes.fx.attach import attach, owner_of
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.view.fx_graph import linear_input
from lowbit.quant.bcq import pack_planes
from lowbit.quant.bcq_linear import BCQ_LINEAR

__all__ = ["QuantizeBCQ", "bcq_nodes", "replace_with_bcq"]

aten = torch.ops.aten


def bcq_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is BCQ_LINEAR]


def _bias(node: fx.Node, n: int) -> tuple[fx.Node | None, fx.Node | None]:
    """(bias for bcq_linear's [N] operand, or a tensor to add after it when not [N])."""
    if node.target == aten.linear.default:
        b = node.args[2] if len(node.args) > 2 else None
    elif node.target == aten.addmm.default:
        b = node.args[0]
    else:
        return None, None
    if b is None:
        return None, None
    val = b.meta.get("val") if isinstance(b, fx.Node) else None
    if val is not None and tuple(val.shape) == (n,) and val.dtype == torch.float32:
        return b, None
    return None, b


def replace_with_bcq(gm: fx.GraphModule, site: BCQSite) -> None:
    """``site.ref.node`` -> ``bcq_linear`` with ``site.fit``'s operands (module docstring)."""
    node, fit = site.ref.node, site.fit
    n = fit.shape[0]
    stem = site.ref.name
    planes = attach(gm, f"{stem}.bcq_planes", pack_planes(fit.planes_i8), param=False)
    alpha = attach(gm, f"{stem}.bcq_alpha", fit.alpha_f32.contiguous(), param=True)
    offset = (attach(gm, f"{stem}.bcq_offset", fit.offset_f32.contiguous(), param=True)
              if fit.offset_f32 is not None else None)
    bias, add_after = _bias(node, n)
    g = gm.graph
    with g.inserting_before(node):
        args = [linear_input(node), g.get_attr(planes), g.get_attr(alpha),
                g.get_attr(offset) if offset else None, bias]
        new = g.call_function(BCQ_LINEAR, tuple(args))
        if add_after is not None:
            new = g.call_function(aten.add.Tensor, (new, add_after))
    new.meta.update({k: v for k, v in node.meta.items() if k in ("val", "nn_module_stack",
                                                                 "stack_trace")})
    new.meta["lowbit_bcq"] = site.summary()
    node.replace_all_uses_with(new)
    w_node = [a for a in node.all_input_nodes if a.op == "get_attr"
              and str(a.target) == site.ref.weight]
    g.erase_node(node)
    for w in w_node:
        if not w.users:
            g.erase_node(w)
            if not any(x.op == "get_attr" and x.target == w.target for x in g.nodes):
                owner, attr = owner_of(gm, str(w.target))
                if attr in owner._parameters:
                    del owner._parameters[attr]
                elif attr in owner._buffers:
                    del owner._buffers[attr]


@dataclasses.dataclass(frozen=True)
class QuantizeBCQ(Pass):
    """Replace the recipe's linears with ``lowbit::bcq_linear`` (module docstring)."""

    in_place = True
    recipe: Recipe
    progress: bool = True

    def requires(self, gm: fx.GraphModule) -> None:
        bcq_spec(self.recipe)

    def call(self, gm: fx.GraphModule) -> PassResult:
        if bcq_nodes(gm):   # converted already: spotting cannot read BCQ layers as linears
            return PassResult(gm, False)
        sites = plan_bcq(gm, self.recipe, progress=self.progress)
        for site in sites:
            replace_with_bcq(gm, site)
        if sites:
            gm.graph.lint()
            gm.recompile()
            gm.meta.setdefault("lowbit_bcq", []).extend(s.summary() for s in sites)
        return PassResult(gm, bool(sites))
