"""FuseSiblingLinears: int8 linears that read the same u8 tensor become one wider GEMM.

After LegalizeQuantLinear, attention's q, k and v projections are three ``linear_u8s8`` ops on
one quantized input. One GEMM over the concatenated weights reads the input once, fills wider
register tiles and launches one parallel loop instead of three::

    linear_u8s8(x, W_q, ...), linear_u8s8(x, W_k, ...), linear_u8s8(x, W_v, ...)
        -> split(linear_u8s8(x, [W_q; W_k; W_v], [c_q; c_k; c_v], [s_q; ...], [b_q; ...]))

Exact: each output column is computed from the same integers with the same epilogue. Every
sibling's N must be a multiple of 16 (the packed weight pads N to 16: concatenating padded
blocks would interleave padding columns). ``gm.meta["lowbit_tvm_fused_siblings"]`` lists the
groups fused (names of the original ops).
"""

from __future__ import annotations

import dataclasses
import operator
from collections import defaultdict

import torch
from torch import fx

from lowbit.backends.tvm.lowering.legalize import buffer_value
from lowbit.backends.tvm.lowering.ops import LINEAR_U8S8
from lowbit.passes.infra import Pass, PassResult

__all__ = ["FUSED_META", "FuseSiblingLinears"]

FUSED_META = "lowbit_tvm_fused_siblings"


@dataclasses.dataclass(frozen=True)
class FuseSiblingLinears(Pass):
    """Concatenate ``linear_u8s8`` ops that share their input (see module docstring)."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        siblings: dict[fx.Node, list[fx.Node]] = defaultdict(list)
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is LINEAR_U8S8:
                siblings[node.args[0]].append(node)
        fused = []
        for x, nodes in siblings.items():
            params = [[buffer_value(gm, a) for a in n.args[1:5]] for n in nodes]
            if len(nodes) < 2 or any(t is None for p in params for t in p):
                continue
            sizes = [int(p[1].shape[0]) for p in params]          # N of each sibling
            if any(s % 16 for s in sizes):
                continue
            first = nodes[0]
            args = [x]
            for i, suffix in enumerate(("w_vnni", "corr_i32", "scale_f32", "bias_f32")):
                name = f"{first.name}_siblings_{suffix}"
                gm.register_buffer(name, torch.cat([p[i] for p in params]).contiguous())
                with gm.graph.inserting_before(first):
                    args.append(gm.graph.get_attr(name))
            with gm.graph.inserting_before(first):
                wide = gm.graph.call_function(LINEAR_U8S8, tuple(args))
                parts = gm.graph.call_function(torch.ops.aten.split_with_sizes.default,
                                               (wide, sizes, -1))
            for i, node in enumerate(nodes):
                with gm.graph.inserting_before(first):
                    part = gm.graph.call_function(operator.getitem, (parts, i))
                node.replace_all_uses_with(part)
            for node in nodes:
                gm.graph.erase_node(node)
            fused.append([n.meta.get("lowbit_source", n.name) for n in nodes])
        if fused:
            gm.graph.eliminate_dead_code()
            used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
            for name, _ in list(gm.named_buffers()):
                if "." not in name and name not in used and name.endswith(
                        ("_w_vnni", "_corr_i32", "_scale_f32", "_bias_f32")):
                    delattr(gm, name)
            gm.graph.lint()
            gm.recompile()
        gm.meta[FUSED_META] = gm.meta.get(FUSED_META, []) + fused
        return PassResult(gm, bool(fused))
