"""QuantizeTTHalves (FX): a recipe's quantizers on both linears of every materialized TT layer.

    y = linear(linear(x, A^T), B^T, b)      (MaterializeTT: A [in, r], B [r, out])
      -> linear(FQ_a(linear(FQ_a(x), FQ_w(A^T))), FQ_w(B^T), b)

Spotting reads a materialized layer as two linears and gives at most one of them the original
linear's role (the other is "unclassified"), so ``InsertFakeQuant`` alone quantizes a part of
them. This pass finds both halves from ``gm.meta["lowbit_tt"]`` (the entry names the original
linear and its role; the halves read the parameters ``<linear>.tt_a`` / ``<linear>.tt_b``) and
gives each the recipe's weight spec and, for static recipes, its activation spec (the role's
override when it has one): the input ``x`` and the rank-r intermediate each get a quantizer.
Then calibration, freezing and the TVM lowering treat them like any W8A8 linear, so a TT layer
runs as two int8 GEMMs. Skipped on purpose: layers whose role the recipe does not list or
ignores, layers not materialized (their cores are trained with TTCoreQuant instead), and
inputs that already carry a quantizer (``InsertFakeQuant`` got there first; one quantizer per
tensor). A graph without materialized TT layers is left alone (``modified=False``).
"""

from __future__ import annotations

import dataclasses

from torch import fx

from lowbit.config import Recipe
from lowbit.errors import ConfigError
from lowbit.passes.fx.graph_utils import linear_operands
from lowbit.passes.fx.insert_fake_quant import FakeQuantInserter, is_fake_quant
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.sites import ignored
from lowbit.passes.tt import TT_META

__all__ = ["QuantizeTTHalves"]

HALVES = ("tt_a", "tt_b")          # MaterializeTT's parameter suffixes, input half first


def _halves(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """``<linear>.tt_a`` / ``.tt_b`` -> the aten.linear node reading that parameter."""
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or "linear" not in str(node.target):
            continue
        w = node.args[1] if len(node.args) > 1 else None
        if isinstance(w, fx.Node) and is_fake_quant(gm, w):     # InsertFakeQuant's, if spotted
            w = w.args[0]
        if isinstance(w, fx.Node) and w.op == "get_attr" and str(w.target).endswith(HALVES):
            found[str(w.target)] = node
    return found


@dataclasses.dataclass(frozen=True)
class QuantizeTTHalves(Pass):
    """Insert the recipe's quantizers on materialized TT halves (see module docstring)."""

    in_place = True

    recipe: Recipe

    def call(self, gm: fx.GraphModule) -> PassResult:
        weight = self.recipe.weight
        if weight is None:
            return PassResult(gm, False)
        halves = _halves(gm)
        rw = FakeQuantInserter(gm)
        for entry in gm.meta.get(TT_META, []):
            role, name = entry["role"], entry["linear"]
            if (not entry.get("materialized") or role not in self.recipe.roles
                    or ignored(self.recipe, role, name)):
                continue
            act = self.recipe.override(role, self.recipe.activation)
            for suffix in HALVES:
                node = halves.get(f"{name}.{suffix}")
                if node is None:
                    raise ConfigError(f"{name}: materialized TT layer without its "
                                      f"{name}.{suffix} linear (was the graph edited?)")
                x_idx, w_idx = linear_operands(node)
                rw.quantize_input(node, w_idx, weight, f"{name}.{suffix}", weight=True)
                if act is not None:
                    rw.quantize_input(node, x_idx, act, f"{name}.{suffix}:input", weight=False)
        if rw.count:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, rw.count > 0)
