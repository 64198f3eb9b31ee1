"""Integer TIR kernels: the compute definitions, the same for every target.

``linear_u8s8`` (W8A8, static u8 activations, s8 per-channel weights)::

    acc_i32[m, n] = sum_k x_u8[m, k] * w_i8[n, k]                 (w packed [N/16, K/4, 16, 4])
    y_f32[m, n]   = f32(acc_i32[m, n] - corr_i32[n]) * scale_f32[n] + bias_f32[n]
    corr_i32[n]   = x_zp * sum_k w_i8[n, k],   scale_f32[n] = x_scale * w_scale[n]

which is ``linear(dequant(x_u8), dequant(w_i8), bias)`` with the zero-point correction done in
exact integer arithmetic. N is padded to a multiple of 16 in the packed weight; K must be a
multiple of 4.

``linear_w4a16`` (int4 group-wise weights, float activations)::

    w_f32[k, n] = (nibble(w_u8[k // 2, n], k % 2) - 8) * scale_f32[k // g, n]
    y_f32[m, n] = sum_k x_f32[m, k] * w_f32[k, n] + bias_f32[n]

with the int4 weight packed two per byte along K and transposed (lowering/pack.py), so decoding
a row of N weights reads contiguous bytes; for M <= SMALL_M (decode) the sum is regrouped per
group (``_w4a16_gemv``) so a GEMV schedule can decode nibbles inside the multiply-add.

``linear_u8s8_q`` (the same GEMM with a requantizing epilogue: the int8 output of one kernel
is the u8 input of the next)::

    y_u8[m, n] = clip(round(act(y_f32[m, n]) * oq[0]) + oq[1], qmin, qmax)

where ``oq = [1 / out_scale, out_zero_point]`` (fp32, as ``quantized_decomposed`` computes it)
and ``act`` is none, gelu (erf form, TVM's fast_erf polynomial), gelu_tanh or relu.

The u8 x s8 kernels take their packed weight as ``w_dtype`` "int8" (what the frontends emit)
or "int16" (the same s8 values and layout, pre-widened: what the pair-form instruction sets
read, isa/madd.py); ``with_weight_dtype`` rebuilds an emitted kernel for the other dtype (its
shapes and options read back from the kernel), so the CPU pipeline can retype the kernels of a
lowered graph for its target without a second definition.

Every kernel carries ``lowbit.kernel`` (its registry key, registry.py) and ``op_pattern =
kOpaque`` so Relax FuseOps leaves it whole. How a target runs it is in cpu.py (x86 hand
schedules over isa/) and cuda.py (device functions); the PEG kernel is in peg.py.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

from lowbit.backends.tvm.kernels.isa.base import WEIGHT_DTYPES
from lowbit.backends.tvm.kernels.registry import finish, kernel_kind

__all__ = ["ACTIVATIONS", "SMALL_M", "block_dot", "linear_u8s8", "linear_u8s8_q",
           "linear_w4a16", "param_shape", "register_retype", "weight_dtype", "weight_placeholder",
           "with_weight_dtype"]

SMALL_M = 4  # W4A16 with at most this many rows takes the two-level (GEMV) form
ACTIVATIONS = ("none", "gelu", "gelu_tanh", "relu")


def block_dot(x: te.Tensor, w: te.Tensor, i, j, kb0, blocks: int):
    """``sum_{kb < blocks, q < 4} x_u8[i, 4 (kb0 + kb) + q] * w_i8[j // 16, kb0 + kb, j % 16, q]``
    in int32: the reduction of every u8 x s8 kernel, over the packed weight's 4-deep blocks
    ``kb`` and their lanes ``q`` (the block product an instruction set tensorizes)."""
    kb = te.reduce_axis((0, blocks), name="kb")
    q = te.reduce_axis((0, 4), name="kq")
    return te.sum(x[i, (kb0 + kb) * 4 + q].astype("int32")
                  * w[j // 16, kb0 + kb, j % 16, q].astype("int32"), axis=[kb, q])


def weight_placeholder(n_pad: int, k: int, w_dtype: str) -> te.Tensor:
    """The packed weight ``[N/16, K/4, 16, 4]`` of a u8 x s8 kernel, s8 values held as
    ``w_dtype`` (module docstring)."""
    if w_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES}, got {w_dtype!r}")
    return te.placeholder((n_pad // 16, k // 4, 16, 4), w_dtype,
                          name="w_i8" if w_dtype == "int8" else "w_i16")


def _u8s8_gemm(m: int, n: int, k: int, w_dtype: str = "int8"):
    """Placeholders and the fp32 output stage shared by the two W8A8 kernels."""
    if k % 4:
        raise ValueError(f"linear_u8s8 needs K % 4 == 0, got K={k}")
    n_pad = -(-n // 16) * 16
    x = te.placeholder((m, k), "uint8", name="x_u8")
    w = weight_placeholder(n_pad, k, w_dtype)
    corr = te.placeholder((n,), "int32", name="corr_i32")
    scale = te.placeholder((n,), "float32", name="scale_f32")
    bias = te.placeholder((n,), "float32", name="bias_f32")
    acc = te.compute((m, n_pad), lambda i, j: block_dot(x, w, i, j, 0, k // 4),
                     name="acc_i32")
    y = te.compute(
        (m, n),
        lambda i, j: (acc[i, j] - corr[j]).astype("float32") * scale[j] + bias[j],
        name="y_f32")
    return [x, w, corr, scale, bias], y


def linear_u8s8(m: int, n: int, k: int, w_dtype: str = "int8") -> tirx.PrimFunc:
    """The W8A8 linear for x [m, k] and a weight [n, k] (see module docstring)."""
    inputs, y = _u8s8_gemm(m, n, k, w_dtype)
    return finish(te.create_prim_func([*inputs, y]), "linear_u8s8")


def _activation(y: te.Tensor, act: str) -> te.Tensor:
    from tvm import topi

    if act == "none":
        return y
    if act == "relu":
        return te.compute(y.shape, lambda i, j: te.max(y[i, j], tirx.const(0.0, "float32")),
                          name="act")
    if act == "gelu":
        erf = topi.fast_erf(te.compute(y.shape, lambda i, j: y[i, j] * 0.7071067811865476,
                                       name="act_in"))
        return te.compute(y.shape, lambda i, j: y[i, j] * (0.5 + 0.5 * erf[i, j]), name="act")
    if act == "gelu_tanh":
        inner = te.compute(y.shape, lambda i, j: 0.7978845608028654 * (
            y[i, j] + 0.044715 * y[i, j] * y[i, j] * y[i, j]), name="act_in")
        th = topi.fast_tanh(inner)
        return te.compute(y.shape, lambda i, j: y[i, j] * (0.5 + 0.5 * th[i, j]), name="act")
    raise ValueError(f"unknown activation {act!r}: one of {ACTIVATIONS}")


def linear_u8s8_q(m: int, n: int, k: int, act: str = "none", qmin: int = 0,
                  qmax: int = 255, w_dtype: str = "int8") -> tirx.PrimFunc:
    """The W8A8 linear with a fused activation and requantization to u8 (module docstring)."""
    if not 0 <= qmin <= qmax <= 255:
        raise ValueError(f"linear_u8s8_q needs a u8 grid, got [{qmin}, {qmax}]")
    inputs, y = _u8s8_gemm(m, n, k, w_dtype)
    z = _activation(y, act)
    oq = te.placeholder((2,), "float32", name="oq_f32")
    lo, hi = tirx.const(float(qmin), "float32"), tirx.const(float(qmax), "float32")
    out = te.compute(
        (m, n),
        lambda i, j: te.min(te.max(tirx.round(z[i, j] * oq[0]) + oq[1], lo), hi).astype("uint8"),
        name="y_u8")
    return finish(te.create_prim_func([*inputs, oq, out]), "linear_u8s8_q",
                   **{"lowbit.act": act, "lowbit.qmin": qmin, "lowbit.qmax": qmax})


def linear_w4a16(m: int, n: int, k: int, group: int) -> tirx.PrimFunc:
    """The W4A16 linear for x [m, k] and an int4 weight [n, k] in groups of ``group``; for
    m <= SMALL_M (decode) the two-level GEMV form below."""
    if k % group or group % 2:
        raise ValueError(f"linear_w4a16 needs an even group dividing K, got K={k}, g={group}")
    x = te.placeholder((m, k), "float32", name="x_f32")
    w = te.placeholder((k // 2, n), "uint8", name="w_u4x2")
    scale = te.placeholder((k // group, n), "float32", name="scale_f32")
    bias = te.placeholder((n,), "float32", name="bias_f32")
    if m <= SMALL_M:
        return _w4a16_gemv(x, w, scale, bias, m, n, k, group)
    wdq = te.compute(
        (k, n),
        lambda kk, j: (_nibble(w, kk, j) - 8.0) * scale[kk // group, j],
        name="w_f32")
    r = te.reduce_axis((0, k), name="k")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, r] * wdq[r, j], axis=r), name="mm_f32")
    y = te.compute((m, n), lambda i, j: mm[i, j] + bias[j], name="y_f32")
    return finish(te.create_prim_func([x, w, scale, bias, y]), "linear_w4a16")


def _nibble(w: te.Tensor, kk, j):
    """The unsigned 4-bit code of weight row ``kk`` (two per byte along K), as fp32."""
    return ((w[kk // 2, j] >> ((kk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
            ).astype("float32")


def _w4a16_gemv(x, w, scale, bias, m, n, k, group) -> tirx.PrimFunc:
    """Decode-shaped W4A16, the scale and the -8 offset taken out of the inner loop::

        acc[g, i, j] = sum_{kk in group g} x[i, kk] * code[kk, j]         (code in 0..15)
        y[i, j]      = sum_g scale[g, j] * (acc[g, i, j] - 8 * sum_{kk in g} x[i, kk]) + b[j]

    which is the same sum as the definition above, regrouped (fp32 reassociation only)."""
    ng = k // group
    r = te.reduce_axis((0, group), name="kk")
    acc = te.compute(
        (ng, m, n),
        lambda g, i, j: te.sum(x[i, g * group + r] * _nibble(w, g * group + r, j), axis=r),
        name="acc_f32")
    r2 = te.reduce_axis((0, group), name="kx")
    xs = te.compute((ng, m), lambda g, i: te.sum(x[i, g * group + r2], axis=r2), name="xs_f32")
    rg = te.reduce_axis((0, ng), name="g")
    part = te.compute(
        (m, n),
        lambda i, j: te.sum(scale[rg, j] * (acc[rg, i, j] - 8.0 * xs[rg, i]), axis=rg),
        name="sum_f32")
    y = te.compute((m, n), lambda i, j: part[i, j] + bias[j], name="y_f32")
    return finish(te.create_prim_func([x, w, scale, bias, y]), "linear_w4a16")



def param_shape(func: tirx.PrimFunc, i: int) -> tuple[int, ...]:
    """The static shape of a kernel's ``i``-th parameter (a TE-built kernel's params carry
    their buffer's shape and dtype in TVM 0.27)."""
    return tuple(int(d) for d in func.params[i].shape)


def weight_dtype(func: tirx.PrimFunc) -> str:
    """The dtype of a u8 x s8 kernel's packed weight (its second parameter)."""
    return str(func.params[1].dtype)


_RETYPE: dict[str, Callable[[tirx.PrimFunc, str], tirx.PrimFunc]] = {}


def register_retype(kind: str, remake: Callable[[tirx.PrimFunc, str], tirx.PrimFunc]) -> None:
    """How to rebuild a kernel of ``kind`` with another weight dtype: ``remake(func,
    w_dtype)``, reading shapes and options from ``func`` (peg.py registers its kernel)."""
    _RETYPE[kind] = remake


def with_weight_dtype(func: tirx.PrimFunc, w_dtype: str) -> tirx.PrimFunc:
    """The u8 x s8 kernel ``func`` with its packed weight as ``w_dtype`` (same definition,
    shapes, options and attributes; ``func`` itself if it already is)."""
    if weight_dtype(func) == w_dtype:
        return func
    kind = kernel_kind(func)
    if kind not in _RETYPE:
        raise ValueError(f"kernel {kind!r} has no weight dtype to change")
    out = _RETYPE[kind](func, w_dtype)
    extra = {k: v for k, v in func.attrs.items() if k not in out.attrs}
    return out.with_attrs(extra) if extra else out


def _m_n_k(func: tirx.PrimFunc) -> tuple[int, int, int]:
    (m, k), n = param_shape(func, 0), param_shape(func, 2)[-1]    # x [M, K], corr [..., N]
    return m, n, k


register_retype("linear_u8s8", lambda f, dt: linear_u8s8(*_m_n_k(f), w_dtype=dt))
register_retype("linear_u8s8_q", lambda f, dt: linear_u8s8_q(
    *_m_n_k(f), str(f.attrs["lowbit.act"]), int(f.attrs["lowbit.qmin"]),
    int(f.attrs["lowbit.qmax"]), w_dtype=dt))
