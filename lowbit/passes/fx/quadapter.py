"""InsertQuadapter: turn scale pairs into Quadapter's trainable form (Park et al., 2022).

A scale pair ``(y / a) * a`` read by linears ``L_k(y') = y' W_k^T + b_k`` (see
``fold_channel_scales``) becomes, for training with the model weights frozen::

    a      = exp(log_a)                          (log_a: the only trainable parameter)
    L_k    = linear(Q_a(y / a), Q_w(W_k diag(a)), b_k)

which is ``Q(y / a) * a`` with ``a`` moved into the weights exactly as ``FoldChannelScales``
will put it, so the weight quantizer sees the weights the deployed model carries. ``Q_a`` is a
per-tensor fake-quant with the batch's min-max range and ``Q_w`` a min-max weight fake-quant
recomputed every step (straight-through rounding, ``lowbit.quant.numerics``): the static ranges
are calibrated only after training, on the folded graph.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx, nn

from lowbit.config import PerChannel, PerGroup, QuantSpec
from lowbit.errors import ConfigError
from lowbit.passes.fx.fold_channel_scales import linear_weight, scale_pairs
from lowbit.passes.fx.graph_utils import aten
from lowbit.passes.infra import Pass, PassResult
from lowbit.quant.numerics import (
    fake_quantize,
    qparams_from_range,
    weight_grid,
)

__all__ = ["LOG_SUFFIX", "ActQuant", "InsertQuadapter", "WeightQuant"]

LOG_SUFFIX = "_log"


class ActQuant(nn.Module):
    """Per-tensor fake-quant with this batch's min-max range (training only). The range is
    not detached: with straight-through rounding, ``Q(y / a) (W diag(a))^T`` has no gradient
    in ``a`` except through the quantization steps' dependence on ``a``."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.min(), x.max()     # not detached: the range depends on a (LSQ-style grads)
        s = self.spec
        scale, zp = qparams_from_range(lo, hi, s.qmin, s.qmax, s.symmetric)
        return fake_quantize(x, scale, zp, s.qmin, s.qmax)


class WeightQuant(nn.Module):
    """Min-max weight fake-quant recomputed from the (scaled) weight at every call
    (per tensor or per channel; the step is differentiable, as in ActQuant)."""

    def __init__(self, spec: QuantSpec, site: str):
        super().__init__()
        self.spec, self.site = spec, site
        self.qmin, self.qmax = weight_grid(spec)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        g = self.spec.granularity
        if isinstance(g, PerChannel):     # the min-max of weight_qparams, kept differentiable
            dims = [d for d in range(w.dim()) if d != g.axis % w.dim()]
            lo, hi = w.amin(dim=dims, keepdim=True), w.amax(dim=dims, keepdim=True)
        else:
            lo, hi = w.min(), w.max()
        scale, zp = qparams_from_range(lo, hi, self.qmin, self.qmax, self.spec.symmetric)
        return fake_quantize(w, scale, zp, self.qmin, self.qmax)


@dataclasses.dataclass(frozen=True)
class InsertQuadapter(Pass):
    """Rewrite every complete scale pair (module docstring). Handles nn.Linear and HF Conv1D
    consumers with per-tensor / per-channel weight specs. Skips on purpose: linears that are
    not behind a pair stay float (their quantization error is not what ``a`` can reduce), and
    pairs already rewritten (a second run reports no change). Refuses (ConfigError) PerGroup
    weights and dynamic specs."""

    in_place = True

    weight: QuantSpec
    activation: QuantSpec

    def __post_init__(self):
        if self.activation.dynamic or self.weight.dynamic:
            raise ConfigError("InsertQuadapter: weight and activation specs must be static")

    def call(self, gm: fx.GraphModule) -> PassResult:
        pairs = [(d, m) for d, m in scale_pairs(gm) if m is not None]
        g = gm.graph
        for div, mul in pairs:
            attr = div.args[1]
            a0 = gm.get_parameter(attr.target).detach()
            log_name = f"{attr.target}{LOG_SUFFIX}"
            gm.register_parameter(log_name, nn.Parameter(a0.log().clone()))
            with g.inserting_before(div):
                log_a = g.get_attr(log_name)
                a = g.call_function(aten.exp.default, (log_a,))
            a_col = None
            div.replace_input_with(attr, a)
            with g.inserting_after(div):
                q = self._module(gm, ActQuant(self.activation), div, f"{attr.target}_act")
            for lin in list(mul.users):
                w, layout = linear_weight(gm, lin)
                spec = self._spec(layout, lin.name)
                if layout == "in_out" and a_col is None:
                    with g.inserting_after(a):
                        a_col = g.call_function(aten.unsqueeze.default, (a, 1))
                with g.inserting_before(lin):
                    ws = g.call_function(aten.mul.Tensor, (w, a if layout == "out_in" else a_col))
                    wq = self._module(gm, WeightQuant(spec, lin.name), ws, f"{lin.name}_w")
                lin.replace_input_with(w, wq)
                lin.replace_input_with(mul, q)
            g.erase_node(mul)
            if not attr.users:
                g.erase_node(attr)
        if pairs:
            g.lint()
            gm.recompile()
        return PassResult(gm, bool(pairs))

    def _spec(self, layout: str, site: str) -> QuantSpec:
        g = self.weight.granularity
        if layout == "in_out" and isinstance(g, PerChannel):
            return dataclasses.replace(self.weight, granularity=PerChannel(axis=1 - g.axis % 2))
        if isinstance(g, PerGroup):
            raise ConfigError(f"{site}: Quadapter training supports per-tensor and per-channel "
                              f"weights, not PerGroup")
        return self.weight

    @staticmethod
    def _module(gm: fx.GraphModule, mod: nn.Module, src: fx.Node, site: str) -> fx.Node:
        base = "lowbit_qa_" + "".join(c if c.isalnum() else "_" for c in site)
        name, i = base, 0
        while hasattr(gm, name):
            i += 1
            name = f"{base}_{i}"
        gm.add_submodule(name, mod)
        return gm.graph.call_module(name, (src,))
