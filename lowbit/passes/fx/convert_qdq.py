"""ConvertToQDQ: frozen FakeQuantize modules -> standard ``quantized_decomposed`` q/dq ops.

    weight:      FQ_w(W)  ->  dequantize_per_{tensor,channel,channel_group}(W_i8, s, z)
                 (W_i8 is stored: int8 for signed grids, uint8 for affine, int4 values in int8)
    static act:  FQ_a(x)  ->  dequantize_per_tensor(quantize_per_tensor(x, s, z), s, z)
    per-token:   FQ_a(x)  ->  s, z = choose_qparams_per_token[_asymmetric](x)
                              dequantize_per_token(quantize_per_token(x, s, z), s, z)
    per-tensor dynamic: choose_qparams[_symmetric].tensor -> quantize/dequantize .tensor
    PEG act:     FQ_a(x)  ->  dequantize_per_channel(quantize_per_channel(x, s, z, axis), ...)
                              along the last axis; s [C], z [C] constant within each group

The q/dq graph computes what the fake-quant graph computed (same scales, zero points and
grids; quantized_decomposed multiplies by 1/s where fake-quant divides by s, so a value on a
rounding tie may land one step away). The float weight is dropped when nothing else reads it
(a tied embedding keeps it). Refuses (ValueError) a quantizer that was never frozen.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)
import torch.fx as fx

from lowbit.config import PerChannel, PerGroup, PerTensor, PerToken
from lowbit.passes.fx.insert_fake_quant import fake_quant_nodes
from lowbit.passes.infra import Pass, PassResult
from lowbit.quant.fake_quant import FakeQuantize
from lowbit.quant.numerics import quantize_weight

__all__ = ["ConvertToQDQ", "QDQ_OPS"]

qd = torch.ops.quantized_decomposed
QDQ_OPS = {
    qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default,
    qd.quantize_per_tensor.tensor, qd.dequantize_per_tensor.tensor,
    qd.quantize_per_channel.default, qd.dequantize_per_channel.default,
    qd.dequantize_per_channel_group.default,
    qd.quantize_per_token.default, qd.dequantize_per_token.default,
    qd.choose_qparams_per_token.default, qd.choose_qparams_per_token_asymmetric.default,
    qd.choose_qparams.tensor, qd.choose_qparams_symmetric.tensor,
}


def _set_buffer(gm: fx.GraphModule, dotted: str, value: torch.Tensor) -> str:
    owner_path, _, attr = dotted.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    owner.register_buffer(attr, value)
    return dotted


def _free(gm: fx.GraphModule, name: str) -> str:
    unique, i = name, 0
    while hasattr(gm, unique):
        i += 1
        unique = f"{name}_{i}"
    return unique


@dataclasses.dataclass(frozen=True)
class ConvertToQDQ(Pass):
    """Replace every FakeQuantize call with q/dq ops (see module docstring)."""

    in_place = True

    def requires(self, gm: fx.GraphModule) -> None:
        for n in fake_quant_nodes(gm):
            if not gm.get_submodule(n.target).frozen:
                raise ValueError(f"quantizer {n.target} ({gm.get_submodule(n.target).site}) was "
                                 f"never frozen: calibrate (or freeze) before converting")

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = fake_quant_nodes(gm)
        for n in nodes:
            fq: FakeQuantize = gm.get_submodule(n.target)
            with gm.graph.inserting_before(n):
                out = self._weight(gm, n, fq) if fq.is_weight else self._activation(gm, n, fq)
            n.replace_all_uses_with(out)
            gm.graph.erase_node(n)
            gm.delete_submodule(n.target)
        if nodes:
            gm.graph.eliminate_dead_code()
            gm.delete_all_unused_submodules()
            self._drop_unused_params(gm)
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, bool(nodes))

    # ---- weights -------------------------------------------------------------------------
    def _weight(self, gm, n: fx.Node, fq: FakeQuantize) -> fx.Node:
        src = n.args[0]
        w = gm.get_parameter(src.target) if src.target in dict(gm.named_parameters()) \
            else gm.get_buffer(src.target)
        spec, g = fq.spec, fq.spec.granularity
        w_q, scale, zp = quantize_weight(w, spec, fq.site)
        suffix = f"{'u' if w_q.dtype == torch.uint8 else 'i'}{spec.bits}"
        q_node = gm.graph.get_attr(_set_buffer(gm, f"{src.target}_{suffix}", w_q))
        qargs = (fq.qmin, fq.qmax, w_q.dtype)
        if isinstance(g, PerTensor):
            return gm.graph.call_function(qd.dequantize_per_tensor.default,
                                          (q_node, float(scale), int(zp), *qargs))
        # per-channel: one value per channel (1-D); per-group: [N, K / size]
        shape = (-1,) if isinstance(g, PerChannel) else (scale.shape[0], -1)
        s_node = gm.graph.get_attr(_set_buffer(gm, f"{src.target}_scale", scale.reshape(shape)))
        z_node = gm.graph.get_attr(_set_buffer(gm, f"{src.target}_zero_point", zp.reshape(shape)))
        if isinstance(g, PerChannel):
            return gm.graph.call_function(qd.dequantize_per_channel.default,
                                          (q_node, s_node, z_node, g.axis % w.dim(), *qargs))
        assert isinstance(g, PerGroup)
        return gm.graph.call_function(qd.dequantize_per_channel_group.default,
                                      (q_node, s_node, z_node, *qargs, g.size, torch.float32))

    # ---- activations ---------------------------------------------------------------------
    def _activation(self, gm, n: fx.Node, fq: FakeQuantize) -> fx.Node:
        x = n.args[0]
        spec = fq.spec
        g = gm.graph
        if spec.dynamic and isinstance(spec.granularity, PerToken):
            choose = (qd.choose_qparams_per_token.default if spec.symmetric
                      else qd.choose_qparams_per_token_asymmetric.default)
            qp = g.call_function(choose, (x, torch.int8))
            s = g.call_function(operator.getitem, (qp, 0))
            z = g.call_function(operator.getitem, (qp, 1))
            q = g.call_function(qd.quantize_per_token.default, (x, s, z, -128, 127, torch.int8))
            return g.call_function(qd.dequantize_per_token.default,
                                   (q, s, z, -128, 127, torch.int8, torch.float32))
        dtype = torch.int8 if spec.symmetric else torch.uint8
        if spec.dynamic:
            choose = qd.choose_qparams_symmetric.tensor if spec.symmetric else qd.choose_qparams.tensor
            qp = g.call_function(choose, (x, fq.qmin, fq.qmax, torch.finfo(torch.float32).eps,
                                          dtype))
            s = g.call_function(operator.getitem, (qp, 0))
            z = g.call_function(operator.getitem, (qp, 1))
            q = g.call_function(qd.quantize_per_tensor.tensor,
                                (x, s, z, fq.qmin, fq.qmax, dtype))
            return g.call_function(qd.dequantize_per_tensor.tensor,
                                   (q, s, z, fq.qmin, fq.qmax, dtype))
        if fq.is_peg:
            base = "lowbit_peg_" + "".join(c if c.isalnum() else "_" for c in fq.site)
            s_node = g.get_attr(_set_buffer(gm, _free(gm, f"{base}_scale"), fq.scale.detach()
                                            .float().reshape(-1).clone()))
            z_node = g.get_attr(_set_buffer(gm, _free(gm, f"{base}_zero_point"),
                                            fq.zero_point.reshape(-1).clone()))
            axis = x.meta["val"].dim() - 1 if "val" in x.meta else n.meta["val"].dim() - 1
            args = (s_node, z_node, axis, fq.qmin, fq.qmax, dtype)
            q = g.call_function(qd.quantize_per_channel.default, (x, *args))
            return g.call_function(qd.dequantize_per_channel.default, (q, *args))
        args = (float(fq.scale), int(fq.zero_point), fq.qmin, fq.qmax, dtype)
        q = g.call_function(qd.quantize_per_tensor.default, (x, *args))
        return g.call_function(qd.dequantize_per_tensor.default, (q, *args))

    # ---- cleanup -------------------------------------------------------------------------
    @staticmethod
    def _drop_unused_params(gm: fx.GraphModule) -> None:
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        for name, _ in list(gm.named_parameters()):
            if name not in used:
                owner_path, _, attr = name.rpartition(".")
                owner = gm.get_submodule(owner_path) if owner_path else gm
                delattr(owner, attr)

