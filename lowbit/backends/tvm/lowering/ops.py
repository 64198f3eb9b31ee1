"""``lowbit::`` torch ops that stand for one integer kernel each in a lowered graph.

legalize.py rewrites q/dq + linear patterns into these ops before the graph is re-exported
and imported into Relax; frontends/fx.py maps each op to a ``call_tir`` of its kernel
(kernels/defs.py, kernels/peg.py). The eager implementations are the integer reference (exact int64
accumulation), so the rewritten FX graph still runs in torch and can be checked on its own::

    linear_u8s8(x_u8 [.., K], w_vnni [Np/16, K/4, 16, 4], corr_i32 [N], scale_f32 [N], bias_f32 [N])
        = f32(x_u8 @ w_i8^T - corr_i32) * scale_f32 + bias_f32
    linear_u8s8_q(x_u8, w_vnni, corr_i32, scale_f32, bias_f32, oq_f32 [2], act, qmin, qmax)
        = clamp(round(act(linear_u8s8(...)) * oq_f32[0]) + oq_f32[1], qmin, qmax) as u8
    linear_u8s8_peg(x_u8, w_vnni, corr_i32 [G, N], scale_f32 [G, N], bias_f32)
        = sum_g f32(x_u8[.., g] @ w_i8[:, g]^T - corr_i32[g]) * scale_f32[g] + bias_f32
          (K split into G contiguous channel groups: PEG activations)
    linear_w4a16(x_f32 [.., K], w_u4x2 [K/2, N], scale_f32 [K/g, N], bias_f32 [N])
        = x_f32 @ (w_i4 * scale)^T + bias_f32                  (g = K / scale.shape[0])
"""

from __future__ import annotations

import torch

from lowbit.backends.tvm.lowering.pack import unpack_int4, unpack_vnni

__all__ = ["ACTIVATION_FNS", "LINEAR_U8S8", "LINEAR_U8S8_PEG", "LINEAR_U8S8_Q", "LINEAR_W4A16",
           "linear_u8s8", "linear_u8s8_peg", "linear_u8s8_q", "linear_w4a16"]

ACTIVATION_FNS = {
    "none": lambda y: y,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda y: torch.nn.functional.gelu(y, approximate="tanh"),
}


@torch.library.custom_op("lowbit::linear_u8s8", mutates_args=())
def linear_u8s8(x_u8: torch.Tensor, w_vnni: torch.Tensor, corr_i32: torch.Tensor,
                scale_f32: torch.Tensor, bias_f32: torch.Tensor) -> torch.Tensor:
    n = corr_i32.shape[0]
    w_i8 = unpack_vnni(w_vnni, n)
    acc = x_u8.to(torch.int64) @ w_i8.to(torch.int64).t()
    return (acc - corr_i32.to(torch.int64)).to(torch.float32) * scale_f32 + bias_f32


@linear_u8s8.register_fake
def _(x_u8, w_vnni, corr_i32, scale_f32, bias_f32):
    return x_u8.new_empty((*x_u8.shape[:-1], corr_i32.shape[0]), dtype=torch.float32)


@torch.library.custom_op("lowbit::linear_u8s8_q", mutates_args=())
def linear_u8s8_q(x_u8: torch.Tensor, w_vnni: torch.Tensor, corr_i32: torch.Tensor,
                  scale_f32: torch.Tensor, bias_f32: torch.Tensor, oq_f32: torch.Tensor,
                  act: str, qmin: int, qmax: int) -> torch.Tensor:
    y = ACTIVATION_FNS[act](linear_u8s8(x_u8, w_vnni, corr_i32, scale_f32, bias_f32))
    # quantized_decomposed.quantize_per_tensor's arithmetic: round(y * (1 / s)) + z, clamped
    q = torch.round(y * oq_f32[0]) + oq_f32[1]
    return torch.clamp(q, qmin, qmax).to(torch.uint8)


@linear_u8s8_q.register_fake
def _(x_u8, w_vnni, corr_i32, scale_f32, bias_f32, oq_f32, act, qmin, qmax):
    return x_u8.new_empty((*x_u8.shape[:-1], corr_i32.shape[0]), dtype=torch.uint8)


@torch.library.custom_op("lowbit::linear_u8s8_peg", mutates_args=())
def linear_u8s8_peg(x_u8: torch.Tensor, w_vnni: torch.Tensor, corr_i32: torch.Tensor,
                    scale_f32: torch.Tensor, bias_f32: torch.Tensor) -> torch.Tensor:
    groups, n = corr_i32.shape
    w_i8 = unpack_vnni(w_vnni, n).to(torch.int64)
    kg = w_i8.shape[1] // groups
    y = bias_f32.expand(*x_u8.shape[:-1], n).clone()
    for g in range(groups):
        acc = x_u8[..., g * kg:(g + 1) * kg].to(torch.int64) @ w_i8[:, g * kg:(g + 1) * kg].t()
        y = y + (acc - corr_i32[g].to(torch.int64)).to(torch.float32) * scale_f32[g]
    return y


@linear_u8s8_peg.register_fake
def _(x_u8, w_vnni, corr_i32, scale_f32, bias_f32):
    return x_u8.new_empty((*x_u8.shape[:-1], corr_i32.shape[1]), dtype=torch.float32)


@torch.library.custom_op("lowbit::linear_w4a16", mutates_args=())
def linear_w4a16(x_f32: torch.Tensor, w_u4x2: torch.Tensor, scale_f32: torch.Tensor,
                 bias_f32: torch.Tensor) -> torch.Tensor:
    w_i4 = unpack_int4(w_u4x2)                                   # [N, K]
    group = w_i4.shape[1] // scale_f32.shape[0]
    w = w_i4.to(torch.float32) * scale_f32.t().repeat_interleave(group, dim=1)
    return torch.nn.functional.linear(x_f32, w, bias_f32)


@linear_w4a16.register_fake
def _(x_f32, w_u4x2, scale_f32, bias_f32):
    return x_f32.new_empty((*x_f32.shape[:-1], w_u4x2.shape[1]), dtype=torch.float32)


LINEAR_U8S8 = torch.ops.lowbit.linear_u8s8.default
LINEAR_U8S8_Q = torch.ops.lowbit.linear_u8s8_q.default
LINEAR_U8S8_PEG = torch.ops.lowbit.linear_u8s8_peg.default
LINEAR_W4A16 = torch.ops.lowbit.linear_w4a16.default
