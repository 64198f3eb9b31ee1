"""RemoveDropout: inference-mode dropout is the identity; drop it.

    dropout(x, p, train=False)  ->  x

Handles ``aten.dropout.default`` with ``train=False`` (what torch.export records for modules
in eval mode). Skips on purpose: dropout with ``train=True`` (a training graph; removing it
would change the function) and every other op.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from lowbit.passes.infra import Pass, PassResult

__all__ = ["RemoveDropout"]


def _is_eval_dropout(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not torch.ops.aten.dropout.default:
        return False
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    return train is False


@dataclasses.dataclass(frozen=True)
class RemoveDropout(Pass):
    """Remove eval-mode dropout nodes (see module docstring)."""

    in_place = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = 0
        for node in list(gm.graph.nodes):
            if _is_eval_dropout(node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed += 1
        if removed:
            gm.recompile()
        return PassResult(gm, removed > 0)
