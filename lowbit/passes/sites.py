"""Which tensors a Recipe quantizes, read from a TransformerMap: written once, used by the
FX pass (InsertFakeQuant) and its ONNX twin (InsertQDQ), so both IRs pick the same sites with
the same names.

    linears:  every (role, LinearRef) with role in recipe.roles, not ignored
    sites:    "residual"        -> each block's residual adds          "block{i}.residual{j}"
              "attn.o.output"   -> attention out-projection outputs    "{linear}:output"
              "ffn.out.output"  -> FFN out-projection outputs          "{linear}:output"
              "embedding"       -> embedding tables (weights)          "{embedding}.weight"
    ignore:   a role, or an fnmatch glob on the module name
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

from lowbit.config import Recipe
from lowbit.errors import ConfigError
from lowbit.passes.patterns import LinearRef, TransformerMap

__all__ = ["ignored", "check_roles", "quantized_linears", "site_nodes"]

# A site needs this role in the model.
_SITE_NEEDS = {"residual": "residual", "attn.o.output": "attn.o", "ffn.out.output": "ffn.out",
               "embedding": "embedding.word"}


def ignored(recipe: Recipe, role: str, name: str) -> bool:
    return any(g == role or fnmatch.fnmatchcase(name, g) for g in recipe.ignore)


def check_roles(recipe: Recipe, tmap: TransformerMap) -> None:
    """Refuse a recipe whose roles or sites the model lacks (ConfigError naming them)."""
    present = tmap.roles_present()
    if not any(r in present for r in recipe.roles):
        raise ConfigError(f"recipe {recipe.name!r}: none of its roles {list(recipe.roles)} is "
                          f"in this model (found: {sorted(present)})")
    for site in recipe.sites:
        if site in _SITE_NEEDS and _SITE_NEEDS[site] not in present:
            raise ConfigError(f"recipe {recipe.name!r}: site {site!r} needs role "
                              f"{_SITE_NEEDS[site]!r}, which this model lacks")
        if site == "attn.matmul":
            raise ConfigError(f"recipe {recipe.name!r}: site 'attn.matmul' is not supported yet")


def quantized_linears(recipe: Recipe, tmap: TransformerMap) -> Iterator[tuple[str, LinearRef]]:
    for role, ref in tmap.linears():
        if role in recipe.roles and not ignored(recipe, role, ref.name):
            yield role, ref


def site_nodes(recipe: Recipe, tmap: TransformerMap, site: str) -> Iterator[tuple[Any, str]]:
    """(IR node, site name) for one of ``recipe.sites``; for output sites the node is the
    producer (the residual add, or the linear) whose output is quantized."""
    if site == "residual":
        for b in tmap.blocks:
            for i, add in enumerate(b.residual_adds):
                name = f"block{b.index}.residual{i}"
                if not ignored(recipe, "residual", name):
                    yield add, name
    elif site in ("attn.o.output", "ffn.out.output"):
        role = site.removesuffix(".output")
        for r, ref in tmap.linears():
            if r == role and not ignored(recipe, r, ref.name):
                yield ref.node, f"{ref.name}:output"
    elif site == "embedding":
        for e in tmap.embeddings:
            if not ignored(recipe, e.role, e.name):
                yield e.node, f"{e.name}.weight"
