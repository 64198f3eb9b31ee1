"""BCQ operands -> the ``bcq_linear`` kernel layout (kernels/bcq.py), for both frontends.

``lowbit::bcq_linear`` holds its planes row-major (``pack_planes``: uint8 [q, N, K/8], bit j of
byte c is B[n, 8c + j] > 0) and alpha [N, G, q], offset [N, G]. The kernel reads them in column
blocks of W outputs, every block one contiguous run (W = ``block_width(N)``, N zero-padded to
Np, a multiple of W)::

    planes [q, N, K/8]  ->  [Np/W, K/8, q, W],   out[b, c, i, l] = planes[i, W b + l, c]
    alpha  [N, G, q]    ->  [Np/W, G, q, W],     out[b, g, i, l] = alpha[W b + l, g, i]
    offset [N, G]       ->  [Np/W, G, W],        out[b, g, l]    = offset[W b + l, g]
    bias   [N] | None   ->  [N]                  (zeros when None)

The bytes themselves are not touched (the kernel reads the same bit order). ``pack_bcq`` does
it in torch (tests); ``emit_pack_bcq`` emits the same as Relax ops on the
parameters, which the CPU pipeline's LiftTransformParams moves to ``main_transform_params``:
run once at load, not per call, and a saved module keeps the op's own operands.
``emit_bcq_linear`` is the whole op for a frontend: repacking, rows of x flattened to [M, K]
around one ``call_tir`` of the kernel (FX ``lowbit::bcq_linear``, ONNX ``lowbit.BCQLinear``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tvm import relax

from lowbit.backends.tvm.kernels.bcq import bcq_linear, block_width
from lowbit.errors import CompileError

__all__ = ["emit_bcq_linear", "emit_pack_bcq", "pack_bcq"]


def _padded(n: int, width: int) -> int:
    return -(-n // width) * width


def pack_bcq(planes_u8: torch.Tensor, alpha_f32: torch.Tensor, offset_f32: torch.Tensor | None,
             bias_f32: torch.Tensor | None, width: int | None = None) -> list[torch.Tensor]:
    """The kernel operands (planes, alpha, [offset,] bias) from the op's (module docstring)."""
    q, n, kb = planes_u8.shape
    if tuple(alpha_f32.shape[::2]) != (n, q):
        raise ValueError(f"pack_bcq: alpha must be [N={n}, G, q={q}], got {tuple(alpha_f32.shape)}")
    width = width or block_width(n)
    pad = _padded(n, width) - n
    planes = torch.nn.functional.pad(planes_u8, (0, 0, 0, pad))
    alpha = torch.nn.functional.pad(alpha_f32, (0, 0, 0, 0, 0, pad))
    groups, nb = alpha.shape[1], (n + pad) // width
    out = [planes.reshape(q, nb, width, kb).permute(1, 3, 0, 2).contiguous(),
           alpha.reshape(nb, width, groups, q).permute(0, 2, 3, 1).contiguous()]
    if offset_f32 is not None:
        off = torch.nn.functional.pad(offset_f32, (0, 0, 0, pad))
        out.append(off.reshape(nb, width, groups).permute(0, 2, 1).contiguous())
    out.append(torch.zeros(n) if bias_f32 is None else bias_f32)
    return out


def emit_pack_bcq(bb: relax.BlockBuilder, planes: relax.Expr, alpha: relax.Expr,
                  offset: relax.Expr | None, bias: relax.Expr | None,
                  shape: tuple[int, int, int, int]) -> list[relax.Expr]:
    """``pack_bcq`` as Relax ops; ``shape`` is (q, N, K, G) of the operands."""
    q, n, k, groups = shape
    width = block_width(n)
    pad, nb = _padded(n, width) - n, _padded(n, width) // width
    op = relax.op

    def rows(v: relax.Expr, ndim: int, axis: int) -> relax.Expr:
        """``v`` with its N axis ``axis`` zero-padded to Np."""
        if not pad:
            return v
        widths = [0] * (2 * ndim)
        widths[2 * axis + 1] = pad
        return op.nn.pad(v, widths)

    out = [bb.emit(op.permute_dims(op.reshape(rows(planes, 3, 1), (q, nb, width, k // 8)),
                                   [1, 3, 0, 2])),
           bb.emit(op.permute_dims(op.reshape(rows(alpha, 3, 0), (nb, width, groups, q)),
                                   [0, 2, 3, 1]))]
    if offset is not None:
        out.append(bb.emit(op.permute_dims(op.reshape(rows(offset, 2, 0), (nb, width, groups)),
                                           [0, 2, 1])))
    out.append(relax.const(np.zeros(n, np.float32)) if bias is None else bias)
    return out


def _static(v: relax.Expr, what: str) -> list[int]:
    try:
        return [int(d) for d in v.ty.shape.values]
    except (TypeError, AttributeError) as e:
        raise CompileError(f"bcq_linear {what}: needs a static shape, got {v.ty}") from e


def emit_bcq_linear(bb: relax.BlockBuilder, x: relax.Expr, planes: relax.Expr,
                    alpha: relax.Expr, offset: relax.Expr | None, bias: relax.Expr | None,
                    kernels: dict[str, relax.GlobalVar]) -> relax.Expr:
    """``bcq_linear(x, planes, alpha, offset, bias)`` as Relax: the operands repacked, x
    [.., K] as [M, K] rows, one kernel per shape added to ``bb`` (cached in ``kernels``)."""
    k = _static(x, "input")[-1]
    (q, n, kb), groups = _static(planes, "planes"), _static(alpha, "alpha")[1]
    if k != 8 * kb:
        raise CompileError(f"bcq_linear: input has {k} features, the planes hold K={8 * kb}")
    args = emit_pack_bcq(bb, planes, alpha, offset, bias, (q, n, k, groups))
    return emit_bcq_call(bb, x, args, q, n, groups, offset is not None, kernels)


def emit_bcq_call(bb: relax.BlockBuilder, x: relax.Expr, packed: list, q: int, n: int,
                  groups: int, offset: bool, kernels: dict) -> relax.Expr:
    """The kernel call on operands already in the kernel layout (``packed``: planes, alpha(,
    offset), bias, as ``emit_pack_bcq`` returns them): x [.., K] as [M, K] rows -> [.., N];
    one kernel per shape added to ``bb`` (cached in ``kernels``)."""
    shape = _static(x, "input")
    k, m = shape[-1], math.prod(shape[:-1])
    name = f"lowbit_bcq_linear_{m}_{n}_{k}_{q}_{groups}_{int(offset)}"
    if name not in kernels:
        kernels[name] = bb.add_func(bcq_linear(m, n, k, q, k // groups, offset), name)
    x2 = bb.emit(relax.op.reshape(x, (m, k)))
    y = bb.emit(relax.call_tir(kernels[name], [x2, *packed], relax.TensorType((m, n), "float32")))
    return bb.emit(relax.op.reshape(y, (*shape[:-1], n)))
