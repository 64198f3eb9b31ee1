"""InsertFakeQuant: put FakeQuantize modules at the tensors a Recipe names (FX "prepare").

    linear(x, W, b)  ->  linear(FQ_a(x), FQ_w(W), b)
    site t           ->  FQ_a(t) for every reader of t     (residual sums, linear outputs)
    embedding(E, i)  ->  embedding(FQ_w(E), i)             (site "embedding")

Sites come from the TransformerMap by role, never from op names. One quantizer per tensor:
linears that read the same tensor (q, k and v after a norm) share one activation quantizer,
as an integer pipeline quantizes that tensor once.

Handles: nn.Linear-style weights ([out, in]) and HF Conv1D ([in, out], per-channel axis
mapped to the output axis). Skips on purpose: roles the recipe does not list, modules matched
by ``ignore`` (glob on the module name, or a role), and sites already carrying a quantizer
(so a second run reports ``modified=False``). Refused (ConfigError): a recipe role or site the
model does not have, a PerGroup size that does not divide the input dimension, a PEG group
count that does not divide the hidden size. ``recipe.activation_overrides`` give a role or a
site its own activation spec (PEG at the FFN input, FFN output and residual sums).
"""

from __future__ import annotations

import dataclasses

from torch import fx

from lowbit.config import PerChannel, PerGroup, QuantSpec, Recipe
from lowbit.errors import ConfigError
from lowbit.passes.fx.graph_utils import linear_operands
from lowbit.passes.fx.spot import find_transformer
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.patterns import LinearRef
from lowbit.passes.sites import check_roles, quantized_linears, site_nodes
from lowbit.quant.fake_quant import FakeQuantize

__all__ = ["FakeQuantInserter", "InsertFakeQuant", "fake_quant_nodes", "is_fake_quant"]


def is_fake_quant(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), FakeQuantize)


def fake_quant_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if is_fake_quant(gm, n)]


def _weight_spec(spec: QuantSpec, ref: LinearRef) -> QuantSpec:
    """Recipe granularity is stated for [out, in]; map it onto the weight's real layout."""
    g = spec.granularity
    if ref.weight_layout == "out_in":
        return spec
    if isinstance(g, PerChannel):
        return dataclasses.replace(spec, granularity=PerChannel(axis=1 - g.axis % 2))
    if isinstance(g, PerGroup):
        raise ConfigError(f"{ref.name}: PerGroup weights in [in, out] layout (HF Conv1D) are "
                          f"not supported; use PerChannel for this model")
    return spec


@dataclasses.dataclass(frozen=True)
class InsertFakeQuant(Pass):
    """Insert observers/fake-quant for ``recipe`` (see module docstring)."""

    in_place = True

    recipe: Recipe

    def call(self, gm: fx.GraphModule) -> PassResult:
        tmap = find_transformer(gm)
        check_roles(self.recipe, tmap)
        rw = FakeQuantInserter(gm)
        for role, ref in quantized_linears(self.recipe, tmap):
            x_idx, w_idx = linear_operands(ref.node)
            if self.recipe.weight is not None:
                rw.quantize_input(ref.node, w_idx, _weight_spec(self.recipe.weight, ref),
                                  f"{ref.name}.weight", weight=True)
            act = self.recipe.override(role, self.recipe.activation)
            if act is not None:
                rw.quantize_input(ref.node, x_idx, act, f"{ref.name}:input", weight=False)
        site_spec = self.recipe.sites_activation or self.recipe.activation
        for site in self.recipe.sites:
            for node, name in site_nodes(self.recipe, tmap, site):
                if site == "embedding":
                    rw.quantize_input(node, 0, self.recipe.weight or site_spec, name,
                                      weight=True)
                else:
                    rw.quantize_output(node, self.recipe.override(site, site_spec), name)
        if rw.count:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, rw.count > 0)


def _mark(gm: fx.GraphModule, fq: fx.Node, src: fx.Node) -> None:
    """FQ nodes carry their input's value metadata and a marker spotting sees through."""
    fq.meta["lowbit_fake_quant"] = True
    if "val" in src.meta:
        fq.meta["val"] = src.meta["val"]
        shape = getattr(src.meta["val"], "shape", None)
        if shape is not None and len(shape) and isinstance(shape[-1], int):
            gm.get_submodule(fq.target).check_channels(int(shape[-1]))


class FakeQuantInserter:
    """Inserts FakeQuantize call_module nodes into one graph and counts them (also used by
    passes that pick their own linears, e.g. ``QuantizeFormats``)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.count = 0

    def _new_fq(self, spec: QuantSpec, site: str, weight: bool) -> str:
        gm = self.gm
        base = "lowbit_fq_" + "".join(c if c.isalnum() else "_" for c in site)
        name, i = base, 0
        while hasattr(gm, name):
            i += 1
            name = f"{base}_{i}"
        gm.add_submodule(name, FakeQuantize(spec, site, is_weight=weight))
        self.count += 1
        return name

    def quantize_input(self, user: fx.Node, idx: int, spec: QuantSpec, site: str,
                       *, weight: bool) -> None:
        gm = self.gm
        src = user.args[idx]
        if not isinstance(src, fx.Node) or is_fake_quant(gm, src):
            return
        if weight and src.op != "get_attr":
            raise ConfigError(f"{site}: weight is computed in the graph ({src.format_node()}), "
                              f"not a parameter; it cannot be quantized ahead of time")
        # Share one quantizer per tensor: reuse an existing FQ reading `src` with this spec.
        for other in src.users:
            if (other is not user and is_fake_quant(gm, other)
                    and gm.get_submodule(other.target).spec == spec
                    and gm.get_submodule(other.target).is_weight == weight):
                user.replace_input_with(src, other)
                return
        target = self._new_fq(spec, site, weight)
        with gm.graph.inserting_after(src):
            fq = gm.graph.call_module(target, (src,))
        _mark(gm, fq, src)
        user.replace_input_with(src, fq)

    def quantize_output(self, node: fx.Node, spec: QuantSpec, site: str) -> None:
        gm = self.gm
        users = list(node.users)
        if any(is_fake_quant(gm, u) for u in users):
            return
        target = self._new_fq(spec, site, weight=False)
        with gm.graph.inserting_after(node):
            fq = gm.graph.call_module(target, (node,))
        _mark(gm, fq, node)
        for u in users:
            u.replace_input_with(node, fq)

