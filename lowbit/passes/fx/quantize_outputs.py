"""quantize_outputs: end every tensor output of an FX graph on one static u8 grid.

    y  ->  dequantize_per_tensor(quantize_per_tensor(y, s, z, 0, 255, u8), s, z, 0, 255, u8)

Two implementations of one quantized graph (the FX fake-quant graph, its QDQ ONNX export, a TVM
integer module) then end on the same output grid, and their agreement can be counted in output
steps (DESIGN.md, the integer-agreement rule). A test helper more than a pass: applied twice it
appends a second q/dq pair (which changes nothing numerically), so it is a function, not a
``Pass``; ``lowbit.testing.quantize_outputs`` re-exports it.
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed ops
from torch import fx

__all__ = ["quantize_outputs"]


def quantize_outputs(gm: fx.GraphModule, scale: float, zero_point: int) -> fx.GraphModule:
    """Append a static u8 quantize/dequantize (``scale``, ``zero_point``) to every tensor
    output of the FX graph ``gm`` (modified in place and returned): two implementations of
    one quantized graph then end on the same output grid, and their agreement can be counted
    in output steps."""
    qd = torch.ops.quantized_decomposed
    out = next(n for n in gm.graph.nodes if n.op == "output")

    def wrap(n):
        if not isinstance(n, fx.Node):
            return n
        args = (scale, zero_point, 0, 255, torch.uint8)
        with gm.graph.inserting_before(out):
            q = gm.graph.call_function(qd.quantize_per_tensor.default, (n, *args))
            return gm.graph.call_function(qd.dequantize_per_tensor.default, (q, *args))

    out.args = (fx.node.map_aggregate(out.args[0], wrap),)
    gm.recompile()
    return gm
