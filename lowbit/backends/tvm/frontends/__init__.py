"""Frontends: a quantized model -> Relax IRModule with lowbit's integer kernels as ``call_tir``.

    fx.py        FX GraphModule (after lowering/legalize.py) -> re-export -> Relax, converters
                 for the ``lowbit::`` ops and the q/dq left in the graph
    onnx.py      QDQ ONNX (proto, path, onnx_ir) -> read, check, import with TVM's ONNX frontend
    onnx_qdq.py  its lowering: MatMul(DequantizeLinear(x), DequantizeLinear(W)) -> int8 kernels,
                 with the planners of lowering/ (the same arrays as the FX path)

Both return an ``ImportedModel``: the module with weights as parameters of ``main`` (after
the user inputs, never constants of the library) and their values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ImportedModel"]


@dataclasses.dataclass
class ImportedModel:
    mod: Any                         # tvm.IRModule
    params: list[Any]                # tvm tensors, in ``main`` order after the inputs
    input_names: list[str]
    output_names: list[str]
    example: tuple[tuple, dict]
