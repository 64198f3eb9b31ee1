"""LowerQDQMatMul: the QDQ MatMuls of an imported ONNX model -> lowbit's int8 kernels.

W8A8 (static per-tensor 8-bit activations, symmetric int8 weights; ONNX MatMul weights are
[K, N], so per-output-channel scales lie on axis 1)::

    matmul(dequantize(x_q, s_x, z_x), dequantize(W_i8[K, N], s_w[N], 0, axis=1)) [+ b[N]]
        -> linear_u8s8(x_u8 [M, K], pack_vnni(W^T), corr_i32, scale_f32, b_f32) [..., N]

    y[m, n] = sum_k s_x (x_q[m, k] - z_x) s_w[n] W[k, n] + b[n]
            = s_x s_w[n] (acc[m, n] - z_x colsum(W)[n]) + b[n],    corr[n] = z_x colsum(W)[n]

PEG inputs (per-axis activations along the last axis whose scale and zero point are constant
on G equal contiguous channel groups)::

    matmul(dequantize(x_q, s_x[K], z_x[K], axis=-1), dequantize(W_i8[K, N], s_w[N], 0, axis=1))
        [+ b[N]]  ->  linear_u8s8_peg(x_u8, pack_vnni(W^T), corr_i32 [G, N], scale_f32 [G, N], b)

``corr`` and ``scale`` come from the planners the FX path uses (lowering/int8.py,
lowering/peg.py), so both frontends give a model the same kernel arrays. ``x_q`` may be any
u8 or s8 tensor (a QuantizeLinear, a Clip of one, ...): the kernel needs only its integers and
the static ``s_x``, ``z_x``. An s8 ``x_q`` becomes u8 exactly by ``x_u8 = x_s8 + 128``,
``z_x + 128``. A per-tensor weight scale is broadcast to [N]. The packed weight, ``corr``,
``scale`` and ``b`` are computed in numpy from the detached parameters and become new
parameters (never constants: weights stay out of the library and away from FoldConstant). The
``add`` of a bias is absorbed when the matmul has no other reader.

Skipped on purpose, with the reason in the lowering log (``(weight name, kind or reason)``, as
the FX path records it): weights that are not 2-D int8 parameters, scales on the input-channel
axis, non-zero weight zero points, K not a multiple of 4, computed qparams, matmuls whose
weight is not quantized (they stay fp32), and per-axis inputs the PEG kernel cannot take
(lowering/peg.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor

from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.lowering.int8 import S8_TO_U8, w8a8_corr_scale
from lowbit.backends.tvm.lowering.pack import pack_vnni
from lowbit.backends.tvm.lowering.peg import plan_peg

__all__ = ["lower_qdq_matmul"]


@visitor
class _Uses(PyExprVisitor):
    def __init__(self) -> None:
        super().__init__()
        self.count: dict = {}

    def visit_var_(self, var) -> None:
        self.count[var] = self.count.get(var, 0) + 1

    def visit_dataflow_var_(self, var) -> None:
        self.visit_var_(var)


def _is_op(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == name


class _Plan:
    """What LowerQDQMatMul decided: per matmul (or bias add) call, the kernel arguments."""

    def __init__(self, func: relax.Function, values: dict) -> None:
        self.values = values          # param Var -> numpy value
        self.bound: dict = {}         # Var -> bound expression
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.bound[b.var] = b.value
        uses = _Uses()
        uses.visit_expr(func.body)
        self.uses = uses.count
        self.rewrites: dict = {}      # call -> (x_q, zp shift, name, (m, n, k), arrays,
        #                                          (kernel kind, extra key, make(m, n, k)))
        self.log: list[tuple[str, str]] = []

    def value(self, expr) -> np.ndarray | None:
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Var):
            if expr in self.values:
                return self.values[expr]
            if expr in self.bound:
                return self.value(self.bound[expr])
        return None

    def expr(self, e):
        return self.bound.get(e, e) if isinstance(e, relax.Var) else e

    def weight_name(self, w) -> str | None:
        """The parameter a matmul's right operand reads (directly or through a dequantize or a
        transpose), or None for an activation x activation matmul."""
        w = self.expr(w)
        while _is_op(w, "relax.dequantize") or _is_op(w, "relax.permute_dims"):
            w = self.expr(w.args[0])
        if isinstance(w, relax.Var) and w in self.values:
            return str(w.name)
        return "<constant>" if isinstance(w, tvm.ir.GenericConst) else None

    def plan(self, mm: relax.Call, int8: bool) -> None:
        name = self.weight_name(mm.args[1])
        if name is None:
            return
        why = self._w8a8(mm, name) if int8 else "fp32: int8 disabled"
        self.log.append((name, why))

    def _w8a8(self, mm: relax.Call, name: str) -> str:
        x_dq, w_dq = self.expr(mm.args[0]), self.expr(mm.args[1])
        transposed = _is_op(w_dq, "relax.permute_dims") \
            and _is_op(self.expr(w_dq.args[0]), "relax.dequantize") \
            and (w_dq.attrs.axes is None or [int(a) for a in w_dq.attrs.axes] == [1, 0])
        if transposed:  # Gemm(transB=1): B is [N, K]
            w_dq = self.expr(w_dq.args[0])
        if not _is_op(w_dq, "relax.dequantize"):
            return "fp32: weight not quantized"
        w = self.value(w_dq.args[0])
        s_w, z_w = self.value(w_dq.args[1]), self.value(w_dq.args[2])
        if w is None or s_w is None or z_w is None:
            return "fp32: weight or its qparams are computed, not parameters"
        if w.dtype != np.int8 or w.ndim != 2:
            return f"fp32: weight is {w.dtype} {list(w.shape)}, the kernel takes 2-D int8"
        axis = int(w_dq.attrs.axis) % 2
        if transposed:
            w, axis = w.T, 1 - axis
        k, n = w.shape
        if s_w.size == n and (axis == 1 or n == 1):
            s_w = s_w.reshape(n)
        elif s_w.size == 1:
            s_w = np.full(n, float(s_w.reshape(())), np.float32)
        else:
            return f"fp32: weight scale {list(s_w.shape)} not per output channel (axis 1 of [K, N])"
        if np.any(z_w != 0):
            return "fp32: weight zero point not 0 (asymmetric weights)"
        if k % 4:
            return f"fp32: K={k} not a multiple of 4 (16x4 weight blocks)"
        if not _is_op(x_dq, "relax.dequantize"):
            return "fp32: input is not dequantized (weight-only quantization)"
        x_q = x_dq.args[0]
        s_x, z_x = self.value(x_dq.args[1]), self.value(x_dq.args[2])
        if s_x is None or z_x is None:
            return "fp32: input qparams are computed, not static"
        x_dtype = x_q.ty.dtype
        if x_dtype not in ("uint8", "int8"):
            return f"fp32: input dtype {x_dtype} is not 8-bit"
        try:
            shape = [int(d) for d in x_q.ty.shape.values]
        except (TypeError, AttributeError):
            return "fp32: input shape not static"
        if len(shape) < 2 or shape[-1] != k:
            return f"fp32: input shape {shape} is not [..., K={k}]"
        shift = S8_TO_U8 if x_dtype == "int8" else 0
        if s_x.size == 1 and z_x.size == 1:
            kernel = ("linear_u8s8", (), kernels.linear_u8s8)
            corr, scale = w8a8_corr_scale(np.ascontiguousarray(w.T), s_w,
                                          float(s_x.reshape(())), int(z_x.reshape(())) + shift)
        else:  # per-axis input: PEG (lowering/peg.py)
            peg = plan_peg(w, s_w, s_x, z_x.astype(np.int64) + shift,
                           axis=int(x_dq.attrs.axis), ndim=len(shape))
            if isinstance(peg, str):
                return peg
            corr, scale = peg.corr_i32, peg.scale_f32
            kernel = ("linear_u8s8_peg", (peg.groups,),
                      functools.partial(kernels.linear_u8s8_peg, groups=peg.groups))
        bias, target = np.zeros(n, np.float32), mm
        add = self._bias_add(mm, n)
        if add is not None:
            target, bias = add
        w_vnni = pack_vnni(torch.from_numpy(np.ascontiguousarray(w.T))).numpy()
        self.rewrites[target] = (x_q, shift, name, (math.prod(shape[:-1]), n, k),
                                 [("w_vnni", w_vnni), ("corr_i32", corr), ("scale_f32", scale),
                                  ("bias_f32", bias)], kernel)
        return kernel[0]

    def _bias_add(self, mm: relax.Call, n: int):
        """The ``add(mm, b)`` binding to absorb: (call, b as f32 [N]) or None."""
        var = next((v for v, e in self.bound.items() if e.same_as(mm)), None)
        if var is None or self.uses.get(var, 0) != 1:
            return None
        for e in self.bound.values():
            if _is_op(e, "relax.add") and any(a.same_as(var) for a in e.args):
                other = e.args[1] if e.args[0].same_as(var) else e.args[0]
                b = self.value(other)
                if b is not None and b.size == n and b.shape[-1:] == (n,) \
                        and b.dtype == np.float32:
                    return e, b.reshape(n)
                return None
        return None


@mutator
class _Rewrite(PyExprMutator):
    """Emit the planned kernels; new weight parameters collect in ``new_params``."""

    def __init__(self, mod: tvm.IRModule, plan: _Plan) -> None:
        super().__init__(mod)
        self.plan = plan
        self.new_params: list[tuple[relax.Var, np.ndarray]] = []
        self.kernels: dict[str, relax.GlobalVar] = {}

    def visit_call_(self, call):
        job = next((v for c, v in self.plan.rewrites.items() if c.same_as(call)), None)
        if job is None:
            return super().visit_call_(call)
        x_q, shift, name, (m, n, k), arrays, (kind, key, make) = job
        bb = self.builder_
        x = self.visit_expr(x_q)
        shape = [int(d) for d in x_q.ty.shape.values]
        if shift:
            x = relax.op.add(relax.op.astype(x, "int32"), relax.const(shift, "int32"))
            x = relax.op.astype(x, "uint8")
        x2 = bb.emit(relax.op.reshape(x, (m, k)))
        args = []
        for suffix, arr in arrays:
            var = relax.Var(f"{name}_{suffix}", relax.TensorType(arr.shape, str(arr.dtype)))
            self.new_params.append((var, arr))
            args.append(var)
        kname = f"lowbit_{kind}_" + "_".join(str(d) for d in (m, n, k, *key))
        if kname not in self.kernels:
            self.kernels[kname] = bb.add_func(make(m, n, k), kname)
        y = bb.emit(relax.call_tir(self.kernels[kname], [x2, *args],
                                   relax.TensorType((m, n), "float32")))
        return relax.op.reshape(y, (*shape[:-1], n))


def lower_qdq_matmul(mod: tvm.IRModule, params: list, *, int8: bool = True
                     ) -> tuple[tvm.IRModule, list, list[tuple[str, str]]]:
    """Lower QDQ MatMuls of ``main`` (module docstring); returns the module, its parameter
    values (``main`` order after the inputs) and the lowering log."""
    func = mod["main"]
    n_in = int(func.attrs["num_input"])
    values = {v: p.numpy() for v, p in zip(func.params[n_in:], params)}
    plan = _Plan(func, values)
    for e in list(plan.bound.values()):
        if _is_op(e, "relax.matmul"):
            plan.plan(e, int8)
    if not plan.rewrites:
        return mod, params, plan.log
    rw = _Rewrite(mod, plan)
    body = rw.visit_expr(func.body)
    all_params = list(func.params) + [v for v, _ in rw.new_params]
    all_values = list(params) + [tvm.runtime.tensor(np.ascontiguousarray(a))
                                 for _, a in rw.new_params]
    rw.builder_.update_func(mod.get_global_var("main"),
                            relax.Function(all_params, body, func.ret_ty, func.is_pure,
                                           func.attrs))
    out = relax.transform.DeadCodeElimination(["main"])(rw.builder_.get())
    # parameters: the inputs, then the old ones still read and the new ones
    func = out["main"]
    used = set(relax.analysis.free_vars(func.body))
    kept = [(v, p) for v, p in zip(func.params[n_in:], all_values) if v in used]
    out["main"] = relax.Function(list(func.params[:n_in]) + [v for v, _ in kept], func.body,
                                 func.ret_ty, func.is_pure, func.attrs)
    return out, [p for _, p in kept], plan.log
