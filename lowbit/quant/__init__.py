"""Framework-level numerics shared by every pass and both IRs: quantization parameters,
quantize/dequantize math, straight-through fake-quant, observers, binary-coding (BCQ) fits."""

from lowbit.quant.bcq import BCQWeight
from lowbit.quant.numerics import (
    dequantize, fake_quantize, qparams_from_range, quantize, weight_qparams,
)

__all__ = ["qparams_from_range", "quantize", "dequantize", "fake_quantize", "weight_qparams",
           "BCQWeight"]
