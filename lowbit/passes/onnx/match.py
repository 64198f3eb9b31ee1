"""Moved to ``lowbit.passes.view.onnx_match``
(the graph-view layer the passes of both IRs build on); kept as this import path."""

from lowbit.passes.view.onnx_match import (  # re-exported
    NormMatch,
    act_kind,
    is_residual_add,
    match_norm,
    rope_source,
)

__all__ = [
    "NormMatch", "act_kind", "is_residual_add", "match_norm", "rope_source",
]
