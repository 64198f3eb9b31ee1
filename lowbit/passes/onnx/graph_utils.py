"""Moved to ``lowbit.passes.view.onnx_graph``
(the graph-view layer the passes of both IRs build on); kept as this import path."""

from lowbit.passes.view.onnx_graph import (  # re-exported
    ORDER,
    QSITE_KEY,
    SHAPE_OPS,
    WeightSource,
    ancestors,
    back,
    bias_add,
    const_array,
    consumers,
    data_input,
    data_users,
    descendants,
    is_const,
    is_op,
    is_quantized,
    is_scalar_scale,
    is_split,
    is_transparent,
    linear_output,
    number,
    order,
    param_of,
    producer,
    quant_source,
    shape_of,
    split_source,
    weight_source,
)

__all__ = [
    "ORDER", "QSITE_KEY", "SHAPE_OPS", "WeightSource", "ancestors", "back", "bias_add",
    "const_array", "consumers", "data_input", "data_users", "descendants", "is_const", "is_op",
    "is_quantized", "is_scalar_scale", "is_split", "is_transparent", "linear_output", "number",
    "order", "param_of", "producer", "quant_source", "shape_of", "split_source",
    "weight_source",
]
