"""Graph views: one IR-neutral interface (``base.GraphView``) implemented once per IR, so a
technique is written once over it (``lowbit.passes.spot`` is).

    view = view_of(graph)        # FxView for a torch.fx GraphModule, OnnxView for onnx_ir

Each implementation is imported when first needed: an FX user never imports onnx_ir.
"""

from __future__ import annotations

from lowbit.errors import PatternError
from lowbit.passes.view.base import OPS, Fused, GraphView, Refused

__all__ = ["OPS", "Fused", "GraphView", "Refused", "view_of"]


def view_of(graph: object, what: str = "view_of()") -> GraphView:
    """The view of a torch.fx GraphModule (``lowbit.capture``) or an onnx_ir Model / Graph
    (``lowbit.load_onnx``); a ``PatternError`` naming the type for anything else."""
    module = type(graph).__module__ or ""
    if module.startswith("onnx_ir"):
        import onnx_ir as ir

        from lowbit.passes.view.onnx import OnnxView

        g = graph.graph if isinstance(graph, ir.Model) else graph
        if isinstance(g, ir.Graph):
            return OnnxView(g)
    else:
        from torch import fx

        if isinstance(graph, fx.GraphModule):
            from lowbit.passes.view.fx import FxView

            return FxView(graph)
    raise PatternError(f"{what} takes a torch.fx.GraphModule (from lowbit.capture) or an "
                       f"onnx_ir.Model / Graph (from lowbit.load_onnx), got "
                       f"{type(graph).__name__}")
