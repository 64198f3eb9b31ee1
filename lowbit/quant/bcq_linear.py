"""``lowbit::bcq_linear``: a linear layer whose weight is binary-coded (``lowbit.quant.bcq``).

    y = x @ W'^T + bias,   W'[n, k] = sum_i alpha[n, k // g, i] * B_i[n, k] (+ offset[n, k // g])

    bcq_linear(x [.., K] float32,
               planes_u8 [q, N, K/8] uint8     (``pack_planes``: bit j of byte c is B[8c + j] > 0),
               alpha_f32 [N, G, q] float32     (g = K / G),
               offset_f32 [N, G] float32 | None,
               bias_f32 [N] float32 | None) -> [.., N] float32

A ``torch.library`` custom op, so ``torch.export`` keeps it whole (one node per layer: the
TVM frontend maps it to a bit-plane kernel; the ONNX export writes it as ``lowbit.BCQLinear``
with its decomposition). The eager implementation is the reference: it rebuilds W' in float32
and calls ``F.linear``. Autograd is registered for ``x``, ``alpha``, ``offset`` and ``bias``
(the planes are codes, never trained: AlphaTuning trains the alphas)::

    dL/dx      = dL/dy @ W'
    dL/dW'     = dL/dy^T @ x                                (summed over the batch dims)
    dL/dalpha  = sum_{k in group} dL/dW'[n, k] * B_i[n, k]
    dL/doffset = sum_{k in group} dL/dW'[n, k]
"""

from __future__ import annotations

import torch

from lowbit.quant.bcq import unpack_planes

__all__ = ["BCQ_LINEAR", "bcq_linear", "bcq_weight", "check_bcq_operands"]


def check_bcq_operands(planes_u8: torch.Tensor, alpha_f32: torch.Tensor,
                       offset_f32: torch.Tensor | None, k: int | None = None) -> tuple[int, int]:
    """(N, K) of consistent BCQ operands; ValueError naming the mismatch otherwise."""
    if planes_u8.dim() != 3 or planes_u8.dtype != torch.uint8:
        raise ValueError(f"bcq_linear: planes must be uint8 [q, N, K/8], got "
                         f"{planes_u8.dtype} {tuple(planes_u8.shape)}")
    q, n, kb = planes_u8.shape
    if alpha_f32.dim() != 3 or tuple(alpha_f32.shape[::2]) != (n, q):
        raise ValueError(f"bcq_linear: alpha must be [N={n}, G, q={q}], got "
                         f"{tuple(alpha_f32.shape)}")
    groups = alpha_f32.shape[1]
    if groups < 1 or (8 * kb) % groups:
        raise ValueError(f"bcq_linear: {groups} alpha groups do not divide K={8 * kb}")
    if offset_f32 is not None and tuple(offset_f32.shape) != (n, groups):
        raise ValueError(f"bcq_linear: offset must be [N={n}, G={groups}], got "
                         f"{tuple(offset_f32.shape)}")
    if k is not None and k != 8 * kb:
        raise ValueError(f"bcq_linear: input has {k} features, the planes hold K={8 * kb}")
    return n, 8 * kb


def _signs(planes_u8: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """[q, N, G, g] in {-1, +1}, of ``dtype``."""
    b = unpack_planes(planes_u8)
    q, n, k = b.shape
    return b.to(dtype).reshape(q, n, groups, k // groups)


def bcq_weight(planes_u8: torch.Tensor, alpha_f32: torch.Tensor,
               offset_f32: torch.Tensor | None) -> torch.Tensor:
    """W' [N, K] float32 from packed planes, alphas and the optional offset."""
    n, k = check_bcq_operands(planes_u8, alpha_f32, offset_f32)
    w = torch.einsum("qngk,ngq->ngk", _signs(planes_u8, alpha_f32.shape[1], alpha_f32.dtype), alpha_f32)
    if offset_f32 is not None:
        w = w + offset_f32.unsqueeze(-1)
    return w.reshape(n, k)


@torch.library.custom_op("lowbit::bcq_linear", mutates_args=())
def bcq_linear(x: torch.Tensor, planes_u8: torch.Tensor, alpha_f32: torch.Tensor,
               offset_f32: torch.Tensor | None, bias_f32: torch.Tensor | None) -> torch.Tensor:
    check_bcq_operands(planes_u8, alpha_f32, offset_f32, x.shape[-1])
    return torch.nn.functional.linear(x, bcq_weight(planes_u8, alpha_f32, offset_f32), bias_f32)


@bcq_linear.register_fake
def _(x, planes_u8, alpha_f32, offset_f32, bias_f32):
    return x.new_empty((*x.shape[:-1], planes_u8.shape[1]))


def _setup_context(ctx, inputs, output):
    x, planes_u8, alpha_f32, offset_f32, bias_f32 = inputs
    ctx.save_for_backward(x, planes_u8, alpha_f32, offset_f32)
    ctx.has_offset, ctx.has_bias = offset_f32 is not None, bias_f32 is not None


def _backward(ctx, grad):
    x, planes_u8, alpha_f32, offset_f32 = ctx.saved_tensors
    w = bcq_weight(planes_u8, alpha_f32, offset_f32)
    gx = grad @ w if ctx.needs_input_grad[0] else None
    g_alpha = g_offset = g_bias = None
    if ctx.needs_input_grad[2] or (ctx.has_offset and ctx.needs_input_grad[3]):
        n, groups = alpha_f32.shape[:2]
        gw = (grad.reshape(-1, n).t() @ x.reshape(-1, x.shape[-1])).reshape(n, groups, -1)
        if ctx.needs_input_grad[2]:
            g_alpha = torch.einsum("qngk,ngk->ngq", _signs(planes_u8, groups, gw.dtype), gw)
        if ctx.has_offset and ctx.needs_input_grad[3]:
            g_offset = gw.sum(-1)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        g_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return gx, None, g_alpha, g_offset, g_bias


bcq_linear.register_autograd(_backward, setup_context=_setup_context)

BCQ_LINEAR = torch.ops.lowbit.bcq_linear.default
