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
model does not have, a PerGroup size that does not divide the input dimension.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import torch.fx as fx

from lowbit.config import PerChannel, PerGroup, QuantSpec, Recipe
from lowbit.errors import ConfigError
from lowbit.passes.fx.graph_utils import linear_operands
from lowbit.passes.fx.spot import find_transformer
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.patterns import LinearRef, TransformerMap
from lowbit.quant.fake_quant import FakeQuantize

__all__ = ["InsertFakeQuant", "is_fake_quant", "fake_quant_nodes"]


def is_fake_quant(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), FakeQuantize)


def fake_quant_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if is_fake_quant(gm, n)]


def _ignored(recipe: Recipe, role: str, name: str) -> bool:
    return any(g == role or fnmatch.fnmatchcase(name, g) for g in recipe.ignore)


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

    recipe: Recipe

    def call(self, gm: fx.GraphModule) -> PassResult:
        tmap = find_transformer(gm)
        self._check_roles(tmap)
        rw = _Rewriter(gm)
        for role, ref in tmap.linears():
            if role not in self.recipe.roles or _ignored(self.recipe, role, ref.name):
                continue
            x_idx, w_idx = linear_operands(ref.node)
            if self.recipe.weight is not None:
                rw.quantize_input(ref.node, w_idx, _weight_spec(self.recipe.weight, ref),
                                  f"{ref.name}.weight", weight=True)
            if self.recipe.activation is not None:
                rw.quantize_input(ref.node, x_idx, self.recipe.activation, f"{ref.name}:input",
                                  weight=False)
        site_spec = self.recipe.sites_activation or self.recipe.activation
        for site in self.recipe.sites:
            for node, name in self._site_nodes(tmap, site):
                if site == "embedding":
                    rw.quantize_input(node, 0, self.recipe.weight or site_spec, name,
                                      weight=True)
                else:
                    rw.quantize_output(node, site_spec, name)
        if rw.count:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, rw.count > 0)

    # ---- sites ---------------------------------------------------------------------------
    def _check_roles(self, tmap: TransformerMap) -> None:
        present = tmap.roles_present()
        wanted = [r for r in self.recipe.roles if r in present]
        if not wanted:
            raise ConfigError(f"recipe {self.recipe.name!r}: none of its roles "
                              f"{list(self.recipe.roles)} is in this model (found: "
                              f"{sorted(present)})")
        need = {"residual": "residual", "attn.o.output": "attn.o", "ffn.out.output": "ffn.out",
                "embedding": "embedding.word"}
        for site in self.recipe.sites:
            if site in need and need[site] not in present:
                raise ConfigError(f"recipe {self.recipe.name!r}: site {site!r} needs role "
                                  f"{need[site]!r}, which this model lacks")
            if site == "attn.matmul":
                raise ConfigError(f"recipe {self.recipe.name!r}: site 'attn.matmul' is not "
                                  f"supported yet")

    def _site_nodes(self, tmap: TransformerMap, site: str):
        if site == "residual":
            for b in tmap.blocks:
                for i, add in enumerate(b.residual_adds):
                    name = f"block{b.index}.residual{i}"
                    if not _ignored(self.recipe, "residual", name):
                        yield add, name
        elif site in ("attn.o.output", "ffn.out.output"):
            role = site.removesuffix(".output")
            for r, ref in tmap.linears():
                if r == role and not _ignored(self.recipe, r, ref.name):
                    yield ref.node, f"{ref.name}:output"
        elif site == "embedding":
            for e in tmap.embeddings:
                if not _ignored(self.recipe, e.role, e.name):
                    yield e.node, f"{e.name}.weight"


def _mark(fq: fx.Node, src: fx.Node) -> None:
    """FQ nodes carry their input's value metadata and a marker spotting sees through."""
    fq.meta["lowbit_fake_quant"] = True
    if "val" in src.meta:
        fq.meta["val"] = src.meta["val"]


class _Rewriter:
    """Inserts FakeQuantize call_module nodes into one graph and counts them."""

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
        _mark(fq, src)
        user.replace_input_with(src, fq)

    def quantize_output(self, node: fx.Node, spec: QuantSpec, site: str) -> None:
        gm = self.gm
        users = list(node.users)
        if any(is_fake_quant(gm, u) for u in users):
            return
        target = self._new_fq(spec, site, weight=False)
        with gm.graph.inserting_after(node):
            fq = gm.graph.call_module(target, (node,))
        _mark(fq, node)
        for u in users:
            u.replace_input_with(node, fq)

