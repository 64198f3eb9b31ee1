"""SplitRowBlocks (FX): a linear whose row blocks take different formats becomes one linear per
block, their outputs concatenated, so that each block can be served by its own kernel.

    linear(x, W, b),  blocks [a_0, a_1), [a_1, a_2), ...  (``meta["lowbit_plan"]``)
        -> cat([linear(x, W[a_0:a_1], b[a_0:a_1]), linear(x, W[a_1:a_2], b[a_1:a_2]), ...], -1)

Exact in float (each output column is the same dot product). A tagged linear stored [in, out]
(HF Conv1D ``addmm(b, x, W)``, ``mm``/``matmul``) becomes ``linear(x, W^T, b)`` first, also
exact, so the formats see one layout. The block weights are frozen parameters beside the
linear's (``<linear>.weight_rows_<a>_<b>``); the old weight goes when nothing else reads it.
Each new linear carries its one block in ``meta["lowbit_plan"]`` (``rows``: its rows in the
whole linear). Untagged linears and single-block ``[out, in]`` ones are left alone, so a
second run reports ``modified=False``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx
from torch._guards import detect_fake_mode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from lowbit.errors import ConfigError
from lowbit.passes.fx.attach import attach
from lowbit.passes.fx.prune_subgroups import PLAN_META
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.view.fx_graph import linear_input, strip_casts

__all__ = ["SplitRowBlocks", "planned_linears"]

aten = torch.ops.aten


def planned_linears(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and PLAN_META in n.meta]


def _tensor(gm: fx.GraphModule, node) -> torch.Tensor | None:
    node = strip_casts(node)
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    return dict(gm.named_parameters()).get(node.target, dict(gm.named_buffers()).get(node.target))


def _operands(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W [out, in], bias or None) of a linear / addmm / mm / matmul node."""
    if node.target == aten.linear.default:
        w = _tensor(gm, node.args[1])
        b = node.args[2] if len(node.args) > 2 else None
        return w, (_tensor(gm, b) if b is not None else None)
    if node.target == aten.addmm.default:
        return _tensor(gm, node.args[2]).t(), _tensor(gm, node.args[0])
    return _tensor(gm, node.args[1]).t(), None


@dataclasses.dataclass(frozen=True)
class SplitRowBlocks(Pass):
    """Split tagged linears into per-format row blocks (module docstring)."""

    in_place = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        changed = 0
        for node in planned_linears(gm):
            tag = node.meta[PLAN_META]
            if len(tag["blocks"]) == 1 and node.target == aten.linear.default:
                continue
            w, b = _operands(gm, node)
            if w is None or (b is None and node.target == aten.addmm.default):
                raise ConfigError(f"{tag['linear']}: its weight or bias is computed in the "
                                  f"graph, not a parameter; its blocks cannot be split")
            x, name, g = linear_input(node), tag["linear"], gm.graph
            parts = []
            with g.inserting_before(node):
                for a, e, code, bits in tag["blocks"]:
                    stem = f"{name}.weight_rows_{a}_{e}"
                    args = [x, g.get_attr(attach(gm, stem, w[a:e].detach().clone(), param=True))]
                    if b is not None:
                        args.append(g.get_attr(attach(gm, f"{name}.bias_rows_{a}_{e}",
                                                      b[a:e].detach().clone(), param=True)))
                    part = g.call_function(aten.linear.default, tuple(args))
                    part.meta[PLAN_META] = {**tag, "blocks": [(a, e, code, bits)],
                                            "rows": (a, e)}
                    parts.append(part)
                new = parts[0] if len(parts) == 1 else g.call_function(aten.cat.default,
                                                                       (parts, -1))
            node.replace_all_uses_with(new)
            g.erase_node(node)
            changed += 1
        if changed:
            g = gm.graph
            g.eliminate_dead_code()
            used = {n.target for n in g.nodes if n.op == "get_attr"}
            for pname, _ in list(gm.named_parameters()):
                if pname not in used:
                    owner_path, _, attr = pname.rpartition(".")
                    delattr(gm.get_submodule(owner_path) if owner_path else gm, attr)
            vals = [n.meta["val"] for n in g.nodes if n.op == "placeholder"]
            FakeTensorProp(gm, detect_fake_mode(vals)).propagate_dont_convert_inputs(*vals)
            g.lint()
            gm.recompile()
        return PassResult(gm, changed > 0)
