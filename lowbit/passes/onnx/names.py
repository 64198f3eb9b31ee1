"""Moved to ``lowbit.passes.view.onnx_names``
(the graph-view layer the passes of both IRs build on); kept as this import path."""

from lowbit.passes.view.onnx_names import (  # re-exported
    node_path,
    owner_name,
    scope_path,
    strip_suffix,
)

__all__ = [
    "node_path", "owner_name", "scope_path", "strip_suffix",
]
