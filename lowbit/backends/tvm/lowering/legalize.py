"""LegalizeQuantLinear: q/dq + linear patterns -> one ``lowbit::`` integer-kernel op each.

W8A8 (static per-tensor activations, int8 per-channel symmetric weights)::

    linear(dq_t(q_t(x, s_x, z_x)), dq_c(W_i8, s_w, 0), b)
        -> linear_u8s8(q_t(x, s_x, z_x) as u8, pack_vnni(W_i8), corr, s_x * s_w, b)

    y[m, n] = sum_k s_x (q[m, k] - z_x) s_w[n] W[n, k] + b[n]
            = s_x s_w[n] (acc[m, n] - z_x rowsum(W)[n]) + b[n],     corr[n] = z_x rowsum(W)[n]

An int8 (signed) activation grid is moved to u8 exactly by adding 128 to the zero point and to
both grid ends (``q_u8 = q_s8 + 128``), since every int8 kernel multiplies u8 by s8.

W4A16 (group-wise int4 symmetric weights, float activations)::

    linear(x, dq_g(W_i4, s[N, K/g], 0, g), b)  ->  linear_w4a16(x, pack_int4(W_i4), s^T, b)

PEG inputs (per-channel u8 activations along the last axis whose scale and zero point are
constant on G equal contiguous channel groups, as PEG's quantizer writes them once its
permutation is folded)::

    linear(dq_c(q_c(x, s[K], z[K], -1)), dq_c(W_i8, s_w, 0), b)
        -> linear_u8s8_peg(q_c(x) as u8, pack_vnni(W_i8), corr[G, N], s_g * s_w, b)

with one int32 accumulator per group (kernels/peg.py); the smallest G that tiles the vectors
into constant runs is used (K / G must be a multiple of 4). ``corr`` and ``scale`` of both
kernels come from int8.py and the PEG plan from peg.py, which the ONNX frontend uses too.

Requantizing epilogues (``requant=True``): a lowered W8A8 linear whose only reader is a u8
per-tensor quantize, directly or through one activation (GELU, tanh-GELU, ReLU) read by
nothing else, absorbs both::

    q_t(act(linear_u8s8(...)), s_o, z_o)  ->  linear_u8s8_q(..., [1/s_o, z_o], act)  (u8 out)

so the next int8 linear reads the u8 tensor straight from the kernel that made it (W8A8: FFN
in -> GELU -> FFN out; W8A8_FULL also the o / FFN-out output quantizers, whose dequantize
then feeds the residual add).

A W4A8 graph (int4 weights, static u8 input) takes the W4A16 kernel on the dequantized input.

Hugging Face Conv1D (GPT-2) computes ``addmm(b, x, W[K, N])``, its weight's channels on axis 1;
W8A8 takes the same kernel with ``W^T`` packed once (group int4 in that layout stays fp32).

Skipped on purpose, with the reason recorded in ``gm.meta["lowbit_tvm_lowering"]``: weights
with non-zero zero points or a channel axis other than 0, K not a multiple of 4 (16x4 weight
blocks) or of the group size, and linears whose weight is not quantized (they stay fp32).
Anything left (q/dq of residual sums, per-token dynamic quantizers, an unmatched dq) stays in
the graph and is imported as float fake-quant math (frontends/fx.py), so every quantized graph
compiles.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.ao.quantization.fx._decomposed
from torch import fx

from lowbit.backends.tvm.lowering.int8 import S8_TO_U8, w8a8_corr_scale
from lowbit.backends.tvm.lowering.ops import (
    LINEAR_U8S8,
    LINEAR_U8S8_PEG,
    LINEAR_U8S8_Q,
    LINEAR_W4A16,
)
from lowbit.backends.tvm.lowering.pack import VNNI_K, pack_int4, pack_vnni
from lowbit.backends.tvm.lowering.peg import plan_peg
from lowbit.passes.infra import Pass, PassResult
from lowbit.quant.bcq_linear import BCQ_LINEAR

__all__ = ["LOWERING_META", "LegalizeQuantLinear", "buffer_value"]

qd = torch.ops.quantized_decomposed
LOWERING_META = "lowbit_tvm_lowering"


def buffer_value(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node reads (None for anything else)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


def _is(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


@dataclasses.dataclass(frozen=True)
class LegalizeQuantLinear(Pass):
    """Rewrite quantized linears into integer-kernel ops (see module docstring).

    Args:
        int8: lower W8A8 linears to ``linear_u8s8``.
        int4: lower group-wise int4 linears to ``linear_w4a16``.
        requant: fuse a following activation + u8 quantize into the int8 linear.
    """

    int8: bool = True
    int4: bool = True
    requant: bool = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        log: list[tuple[str, str]] = []
        shifted: dict[fx.Node, fx.Node] = {}
        changed = 0
        for node in list(gm.graph.nodes):
            if _is(node, BCQ_LINEAR):           # BCQ layers: their own kernel (kernels/bcq.py)
                log.append((node.name, "bcq_linear"))
                continue
            if _is(node, torch.ops.aten.linear.default):
                x, w = node.args[0], node.args[1]
                bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
                layout = "out_in"
            elif _is(node, torch.ops.aten.addmm.default) and not node.kwargs:
                bias, x, w = node.args          # HF Conv1D (GPT-2): x @ W[K, N] + b
                layout = "in_out"
            else:
                continue
            if _is(w, qd.dequantize_per_channel.default):
                why = (self._w8a8(gm, node, x, w, bias, shifted, layout) if self.int8
                       else "fp32: int8 disabled")
            elif _is(w, qd.dequantize_per_channel_group.default):
                why = (("fp32: group weight in the [K, N] layout of a Conv1D" if layout == "in_out"
                        else self._w4a16(gm, node, x, w, bias)) if self.int4
                       else "int4 disabled")
            else:
                why = "fp32: weight not quantized"
            if why in ("linear_u8s8", "linear_u8s8_peg", "linear_w4a16"):
                changed += 1
            log.append((node.name, why))
        if changed:
            gm.graph.eliminate_dead_code()
            if self.requant:
                fused = self._fuse_requant(gm)
                log = [(name, "linear_u8s8_q" if name in fused else why) for name, why in log]
            self._drop_unused_buffers(gm)
            gm.graph.lint()
            gm.recompile()
            gm.meta[LOWERING_META] = log
        elif LOWERING_META not in gm.meta:
            gm.meta[LOWERING_META] = log
        return PassResult(gm, changed > 0)

    # ---- W8A8 --------------------------------------------------------------------------------
    def _w8a8(self, gm, node, x, w, bias, shifted, layout: str = "out_in") -> str:
        """``layout``: "out_in" (aten.linear, W[N, K]) or "in_out" (addmm, W[K, N], its
        output channels on axis 1: transposed here, so both take the same kernel)."""
        w_i8, s_w, z_w = (buffer_value(gm, a) for a in w.args[:3])
        axis, dtype = w.args[3], w.args[6]
        if w_i8 is None or s_w is None or z_w is None or dtype != torch.int8 or w_i8.dim() != 2:
            return "fp32: int8 weight is not a 2-D int8 buffer with buffer scales"
        if axis != (0 if layout == "out_in" else 1) or bool((z_w != 0).any()):
            return "fp32: int8 weight not symmetric per output channel"
        if layout == "in_out":
            w_i8 = w_i8.t().contiguous()
        if w_i8.shape[1] % VNNI_K:
            return f"fp32: K={w_i8.shape[1]} not a multiple of {VNNI_K} (VNNI)"
        if _is(x, qd.dequantize_per_channel.default):
            return self._w8a8_peg(gm, node, x, w_i8, s_w, bias)
        if not (_is(x, qd.dequantize_per_tensor.default)
                and _is(x.args[0], qd.quantize_per_tensor.default)):
            return "fp32: input is not a static per-tensor q/dq"
        q = x.args[0]
        if tuple(q.args[1:]) != tuple(x.args[1:]):
            return "fp32: input q and dq disagree on scale/zero point"
        s_x, z_x, qmin, qmax, a_dtype = q.args[1:6]
        if a_dtype == torch.int8:
            z_x, qmin, qmax = z_x + S8_TO_U8, qmin + S8_TO_U8, qmax + S8_TO_U8
        elif a_dtype != torch.uint8:
            return f"fp32: activation dtype {a_dtype} is not 8-bit"
        if not 0 <= qmin <= qmax <= 255:
            return f"fp32: activation grid [{qmin}, {qmax}] does not fit u8"
        q_u8 = q if a_dtype == torch.uint8 else self._shifted(gm, q, shifted)
        n = w_i8.shape[0]
        corr, scale = (torch.from_numpy(a) for a in w8a8_corr_scale(w_i8, s_w, s_x, z_x))
        b = buffer_value(gm, bias) if bias is not None else torch.zeros(n)
        if bias is not None and b is None:
            return "fp32: bias is computed, not a buffer"
        args = [q_u8]
        for suffix, value in (("w_vnni", pack_vnni(w_i8)), ("corr_i32", corr),
                              ("scale_f32", scale), ("bias_f32", b.detach().float().reshape(n))):
            args.append(self._buffer(gm, node, suffix, value))
        self._replace(gm, node, LINEAR_U8S8, args)
        return "linear_u8s8"

    def _w8a8_peg(self, gm, node, x, w_i8, s_w, bias) -> str:
        q = x.args[0]
        if not _is(q, qd.quantize_per_channel.default):
            return "fp32: per-channel input dq without its quantize"
        s_x, z_x = buffer_value(gm, q.args[1]), buffer_value(gm, q.args[2])
        axis, qmin, qmax, a_dtype = q.args[3:7]
        ndim = q.args[0].meta["val"].dim() if "val" in q.args[0].meta else None
        if s_x is None or z_x is None or axis not in (-1, (ndim or 0) - 1):
            return "fp32: per-channel input not along the last axis with buffer qparams"
        if a_dtype != torch.uint8 or not 0 <= qmin <= qmax <= 255:
            return "fp32: per-channel input is not u8"
        if any(a is not b for a, b in zip(x.args[1:], q.args[1:])) or x.args[3:] != q.args[3:]:
            return "fp32: input q and dq disagree on qparams"
        peg = plan_peg(w_i8.detach().numpy().T, s_w.detach().numpy(), s_x.detach().numpy(),
                       z_x.detach().numpy(), axis=-1, ndim=ndim or 2)
        if isinstance(peg, str):
            return peg
        n = w_i8.shape[0]
        corr, scale = torch.from_numpy(peg.corr_i32), torch.from_numpy(peg.scale_f32)
        b = buffer_value(gm, bias) if bias is not None else torch.zeros(n)
        if bias is not None and b is None:
            return "fp32: bias is computed, not a buffer"
        args = [q]
        for suffix, value in (("w_vnni", pack_vnni(w_i8)), ("corr_i32", corr),
                              ("scale_f32", scale), ("bias_f32", b.detach().float().reshape(n))):
            args.append(self._buffer(gm, node, suffix, value))
        self._replace(gm, node, LINEAR_U8S8_PEG, args)
        return "linear_u8s8_peg"

    @staticmethod
    def _shifted(gm, q: fx.Node, cache: dict) -> fx.Node:
        if q not in cache:
            s, z, lo, hi, _ = q.args[1:6]
            with gm.graph.inserting_after(q):
                cache[q] = gm.graph.call_function(
                    qd.quantize_per_tensor.default,
                    (q.args[0], s, z + S8_TO_U8, lo + S8_TO_U8, hi + S8_TO_U8, torch.uint8))
        return cache[q]

    # ---- requantizing epilogues ---------------------------------------------------------------
    @staticmethod
    def _fuse_requant(gm) -> set[str]:
        """Fold ``[act] -> quantize_per_tensor(u8)`` after lowered linears (module docstring);
        returns the names of the linears that took an epilogue."""
        aten = torch.ops.aten
        fused = set()
        for lin in list(gm.graph.nodes):
            if not _is(lin, LINEAR_U8S8) or len(lin.users) != 1:
                continue
            nxt, act = next(iter(lin.users)), "none"
            if _is(nxt, aten.gelu.default) and len(nxt.users) == 1:
                approx = nxt.kwargs.get("approximate", nxt.args[1] if len(nxt.args) > 1 else "none")
                act = {"none": "gelu", "tanh": "gelu_tanh"}.get(approx)
                nxt = next(iter(nxt.users))
            elif _is(nxt, aten.relu.default) and len(nxt.users) == 1:
                act, nxt = "relu", next(iter(nxt.users))
            if act is None or not _is(nxt, qd.quantize_per_tensor.default):
                continue
            scale, zp, qmin, qmax, dtype = nxt.args[1:6]
            if dtype != torch.uint8 or not all(isinstance(v, (int, float))
                                               for v in (scale, zp, qmin, qmax)):
                continue
            # fp32 like quantized_decomposed: x * (1 / scale) with the scalar cast to fp32
            oq = torch.tensor([1.0 / float(scale), float(zp)], dtype=torch.float32)
            oq_node = LegalizeQuantLinear._buffer(gm, lin, "oq_f32", oq)
            with gm.graph.inserting_before(nxt):
                new = gm.graph.call_function(
                    LINEAR_U8S8_Q, (*lin.args, oq_node, act, int(qmin), int(qmax)))
            new.meta = dict(nxt.meta)
            nxt.replace_all_uses_with(new)
            for dead in (nxt, *([] if act == "none" else [nxt.args[0]]), lin):
                gm.graph.erase_node(dead)
            fused.add(lin.meta.get("lowbit_source", lin.name))
        return fused

    # ---- W4A16 -------------------------------------------------------------------------------
    def _w4a16(self, gm, node, x, w, bias) -> str:
        w_i4, s_w, z_w = (buffer_value(gm, a) for a in w.args[:3])
        qmin, qmax, dtype, group = w.args[3:7]
        if w_i4 is None or s_w is None or z_w is None or w_i4.dim() != 2:
            return "fp32: int4 weight is not a 2-D buffer with buffer scales"
        bits = math.ceil(math.log2(int(qmax) - int(qmin) + 1))
        if bits > 4:
            return (f"fp32: group-{group} weight of {bits} bits [{qmin}, {qmax}]: the group "
                    f"kernel takes 4-bit weights only")
        if dtype != torch.int8 or qmin < -8 or qmax > 7 or bool((z_w != 0).any()):
            return (f"fp32: group-{group} {bits}-bit weight with a zero point [{qmin}, {qmax}] "
                    f"(the kernel is symmetric)")
        n, k = w_i4.shape
        if group % 2 or k % group or s_w.shape != (n, k // group):
            return f"fp32: group size {group} does not tile K={k} evenly"
        b = buffer_value(gm, bias) if bias is not None else torch.zeros(n)
        if bias is not None and b is None:
            return "fp32: bias is computed, not a buffer"
        args = [x]
        for suffix, value in (("w_u4x2", pack_int4(w_i4)),
                              ("scale_f32", s_w.detach().float().t().contiguous()),
                              ("bias_f32", b.detach().float().reshape(n))):
            args.append(self._buffer(gm, node, suffix, value))
        self._replace(gm, node, LINEAR_W4A16, args)
        return "linear_w4a16"

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _buffer(gm, node, suffix: str, value: torch.Tensor) -> fx.Node:
        name = f"{node.name}_{suffix}"
        gm.register_buffer(name, value.contiguous())
        with gm.graph.inserting_before(node):
            return gm.graph.get_attr(name)

    @staticmethod
    def _replace(gm, node, target, args) -> None:
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(target, tuple(args))
        new.meta = dict(node.meta)
        new.meta["lowbit_source"] = node.name
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)

    @staticmethod
    def _drop_unused_buffers(gm) -> None:
        """Delete the integer weights (and their qparams) no get_attr reads any more."""
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        for name, _ in list(gm.named_buffers()):
            if name in used or not name.endswith(("_i8", "_i4", "_u8", "_u4", "_scale",
                                                  "_zero_point")):
                continue
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            delattr(owner, attr)
