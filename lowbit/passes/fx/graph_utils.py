"""Moved to ``lowbit.passes.view.fx_graph``
(the graph-view layer the passes of both IRs build on); kept as this import path."""

from lowbit.passes.view.fx_graph import (  # re-exported
    CASTS,
    SHAPE_OPS,
    SPLIT_OPS,
    RMSMatch,
    act_kind,
    ancestors,
    aten,
    back,
    consumers,
    data_input,
    data_users,
    descendants,
    is_fake_quant,
    is_op,
    is_residual_add,
    is_scalar_scale,
    is_split,
    is_transparent,
    linear_input,
    linear_operands,
    match_rmsnorm,
    numel,
    param_name,
    param_names,
    rope_source,
    shape_of,
    split_source,
    strip_casts,
    strip_suffix,
    tensor_of,
)

__all__ = [
    "CASTS", "SHAPE_OPS", "SPLIT_OPS", "RMSMatch", "act_kind", "ancestors", "aten", "back",
    "consumers", "data_input", "data_users", "descendants", "is_fake_quant", "is_op",
    "is_residual_add", "is_scalar_scale", "is_split", "is_transparent", "linear_input",
    "linear_operands", "match_rmsnorm", "numel", "param_name", "param_names", "rope_source",
    "shape_of", "split_source", "strip_casts", "strip_suffix", "tensor_of",
]
