"""``lowbit::tiered_embedding`` / ``lowbit::tiered_linear`` in ONNX: onnxscript translations for
``export_onnx`` (FX -> ONNX), writing the nodes the ONNX pass writes (passes/onnx/word_bits.py)::

    FX (lowbit::)                                            ONNX (domain lowbit)
    tiered_embedding(ids, pos, planes[], alpha[], offset[])  TieredEmbedding(Ids, Pos, P0, A0, O0,
                                                                             .., P3, A3, O3)
    tiered_linear(x, pos, planes[], alpha[], offset[], b)    TieredLinear(X, Pos, P0, .., O3, Bias)

The ONNX nodes have a fixed arity of ``MAX_TIERS`` tiers: the FX op's ``T`` tiers, then empty
ones (0 rows, constants); an absent offset (an empty 1-D tensor in FX) becomes zeros
[n_t, 1], an absent bias zeros [V]. The exported model needs the nodes' decompositions:
``word_bits.add_word_bits_functions(model)`` adds them.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
import torch
from onnxscript.onnx_opset import opset21 as op

import lowbit.quant.word_ops  # noqa: F401  registers lowbit::tiered_embedding / tiered_linear
from lowbit.passes.onnx.word_bits import (
    MAX_TIERS,
    TIER_INPUTS,
    WB_DOMAIN,
    WB_EMBEDDING,
    WB_LINEAR,
    empty_tier,
)

__all__ = ["TRANSLATIONS", "tiered_embedding", "tiered_linear"]

_P = onnx.defs.OpSchema.FormalParameter
_TIER_TYPES = {"P": "tensor(uint8)", "A": "tensor(float)", "O": "tensor(float)"}


def _op(name: str, first: tuple[str, str], last: list) -> onnxscript.values.Op:
    inputs = [_P(*first), _P("Pos", "tensor(int32)")]
    inputs += [_P(n, _TIER_TYPES[n[0]]) for n in TIER_INPUTS] + last
    schema = onnx.defs.OpSchema(name, WB_DOMAIN, 1, inputs=inputs,
                                outputs=[_P("Y", "tensor(float)")])
    return onnxscript.values.Op(onnxscript.values.Opset(WB_DOMAIN, 1), name, schema)


_EMBEDDING = _op(WB_EMBEDDING, ("Ids", "tensor(int64)"), [])
_LINEAR = _op(WB_LINEAR, ("X", "tensor(float)"), [_P("Bias", "tensor(float)")])


def _const(array: np.ndarray) -> ir.Value:
    return op.Constant(value=ir.tensor(array))


def _tiers(planes, alpha, offset) -> list:
    """``P0, A0, O0, ..`` padded to ``MAX_TIERS``, every offset [n_t, 1]."""
    if len(planes) > MAX_TIERS:
        raise ValueError(f"tiered op with {len(planes)} tiers; ONNX form holds {MAX_TIERS}")
    zero = _const(np.zeros(1, np.float32))
    out = []
    for p, a, o in zip(planes, alpha, offset):
        if len(o.shape) == 1:           # absent: zeros [n_t, 1]
            o = op.Expand(zero, op.Shape(a, start=0, end=2))
        out += [p, a, o]
    d = 8 * int(planes[0].shape[-1])
    for _ in range(len(planes), MAX_TIERS):
        out += [_const(x) for x in empty_tier(d)]
    return out


def tiered_embedding(ids, pos, planes, alpha, offset):
    """``lowbit::tiered_embedding`` as ``lowbit.TieredEmbedding`` (module docstring)."""
    return _EMBEDDING(ids, pos, *_tiers(planes, alpha, offset))


def tiered_linear(x, pos, planes, alpha, offset, bias=None):
    """``lowbit::tiered_linear`` as ``lowbit.TieredLinear`` (module docstring)."""
    if bias is None:
        bias = op.Expand(_const(np.zeros(1, np.float32)), op.Shape(pos))
    return _LINEAR(x, pos, *_tiers(planes, alpha, offset), bias)


TRANSLATIONS = {
    torch.ops.lowbit.tiered_embedding.default: tiered_embedding,
    torch.ops.lowbit.tiered_linear.default: tiered_linear,
}
"""lowbit tiered op -> ONNX translation, for ``custom_translation_table``."""
