"""Elementwise ops whose TVM lowering is wrong on a target, emitted in an exact form.

``x ** e`` (torch ``pow.Tensor_Scalar``, ONNX ``Pow`` with a constant exponent): TVM 0.27's CUDA
build of ``relax.op.power`` returns NaN for a negative base even when the exponent is an integer
(measured on an H200: Gemma's RMSNorm squares its input with ``pow(x, 2)``, and half of the
squares came back NaN; the CPU build is right). Exponents 1..4 become multiplies, 0.5 a
square root, on every target (exact, and cheaper than a pow); other exponents keep ``power``.
"""

from __future__ import annotations

from tvm import relax

__all__ = ["emit_power"]

SMALL_POWERS = (1, 2, 3, 4)


def emit_power(bb: relax.BlockBuilder, x: relax.Expr, exponent: float) -> relax.Expr | None:
    """``x ** exponent`` as multiplies (exponents 1..4) or ``sqrt`` (0.5); None otherwise."""
    e = float(exponent)
    if e == 0.5:
        return bb.emit(relax.op.sqrt(x))
    if not (e.is_integer() and int(e) in SMALL_POWERS):
        return None
    y = x
    for _ in range(int(e) - 1):
        y = bb.emit(relax.op.multiply(y, x))
    return y
