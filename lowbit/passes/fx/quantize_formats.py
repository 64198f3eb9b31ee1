"""QuantizeFormats (FX): every planned linear (one row block each, after ``SplitRowBlocks``)
takes its block's format, through the existing quantizers (``precision_plan.storage``):

    fp32                  unchanged
    fp16                  W <- fp16(W) (kept fp32; ``search.space.dequantized``)
    int8 / int4 / dequant linear(x, W, b) -> linear(x, FQ_w(W), b)     (+ FQ_a(x): int8 with
                          input "int8", or with ``activations`` (legacy), ``recipes.W8A8``'s
                          static u8 spec; calibrated later)
    bcq                   linear -> bcq_linear(x, planes, alpha, offset, b)   (quant.bcq.fit)
    codes                 the uniform codes of ``quantize_weight`` as BCQ planes + offset
                          (``quant.bcq.codes_as_bcq``: the same values) -> bcq_linear

and its input as the tag's ``act`` says (``precision_plan.storage``): "int8" (with int8 weights
only, stored per channel whatever the group) the FQ_a above; "fp16" ``x -> _to_copy(
_to_copy(x, float16), x.dtype)`` before the block's GEMM, whatever its format (one rounding per
input tensor: the blocks of a split linear and q / k / v share it).

Fake-quant modules are then calibrated (int8 inputs), frozen and converted to q/dq by the
passes ``lowbit.quantize`` runs (``Calibrate``, ``Freeze``, ``ConvertToQDQ``); the TVM backend
lowers int8 per-channel weights with a static u8 input to ``linear_u8s8``, group-wise int4
weights to ``linear_w4a16`` and ``bcq_linear`` to its bit-plane kernel; the rest runs as fp32
GEMMs (weights dequantized in the graph). Each block's choice is reported in
``gm.meta["lowbit_precision"]`` (linear, rows, code, bits, storage, kernel, group, act: the
input it gets, "int8" wherever it is quantized). A block done is
marked in its tag, so a second run reports ``modified=False``.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import fx

from lowbit.errors import ConfigError
from lowbit.passes.bcq import BCQSite, relative_error
from lowbit.passes.fx.attach import attach
from lowbit.passes.fx.bcq import replace_with_bcq
from lowbit.passes.fx.insert_fake_quant import FakeQuantInserter
from lowbit.passes.fx.prune_subgroups import PLAN_META
from lowbit.passes.fx.split_rows import planned_linears
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.patterns import LinearRef
from lowbit.passes.precision_plan import bit_planes, fitted_space, storage
from lowbit.passes.view.fx_graph import strip_casts
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.recipes import W8A8
from lowbit.search.space import Candidate, SearchSpace, dequantized

__all__ = ["PRECISION_META", "QuantizeFormats"]

PRECISION_META = "lowbit_precision"
aten = torch.ops.aten


def _weight(gm: fx.GraphModule, node: fx.Node) -> tuple[str, torch.Tensor]:
    attr = strip_casts(node.args[1])
    return attr.target, gm.get_parameter(attr.target)


def _own_weight(gm: fx.GraphModule, node: fx.Node, name: str) -> torch.Tensor:
    """The weight of ``node``, copied to a parameter of its own first when other ops read it
    too (a tied embedding), so that changing it changes this linear only."""
    attr = strip_casts(node.args[1])
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == attr.target]
    if len(readers) == 1 and len(attr.users) == 1:
        return gm.get_parameter(attr.target)
    target = attach(gm, f"{name}.weight_own", gm.get_parameter(attr.target).detach().clone(),
                    param=True)
    with gm.graph.inserting_before(node):
        node.replace_input_with(node.args[1], gm.graph.get_attr(target))
    return gm.get_parameter(target)


def _round_half(gm: fx.GraphModule, node: fx.Node, done: dict) -> None:
    """Input 0 of ``node`` <- fp16(x) cast back to x's dtype; one pair of casts per x."""
    x = node.args[0]
    if x not in done:
        val = x.meta.get("val")
        dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float32
        g = gm.graph
        with g.inserting_after(x):
            half = g.call_function(aten._to_copy.default, (x,), {"dtype": torch.float16})
        with g.inserting_after(half):
            back = g.call_function(aten._to_copy.default, (half,), {"dtype": dtype})
        if isinstance(val, torch.Tensor):
            half.meta["val"] = val.to(torch.float16)
            back.meta["val"] = half.meta["val"].to(dtype)
        done[x] = back
    node.replace_input_with(x, done[x])


@dataclasses.dataclass(frozen=True)
class QuantizeFormats(Pass):
    """Give each tagged linear its block's format (module docstring).

    Args:
        space: the plan's ``SearchSpace`` (group, symmetric, BCQ iterations and offset).
        activations: the legacy switch: int8 per-row blocks of linears whose tag names no
            int8 input also get a static u8 input quantizer (W8A8 kernel); those with input
            "int8" get it either way.
    """

    in_place = True
    space: SearchSpace
    activations: bool = False
    progress: bool = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        todo = [n for n in planned_linears(gm) if "storage" not in n.meta[PLAN_META]
                and n.target == aten.linear.default and len(n.meta[PLAN_META]["blocks"]) == 1]
        ins, report, t0 = FakeQuantInserter(gm), [], time.perf_counter()
        fitted, halves = 0, {}
        for node in progress_bar(todo, desc="mixed precision: blocks", unit="block",
                                 enabled=self.progress):
            tag = node.meta[PLAN_META]
            (a, e, code, bits), = tag["blocks"]
            rows = tag.get("rows", (a, e))
            wname, w = _weight(gm, node)
            site = tag["linear"] if "rows" not in tag else f"{tag['linear']}[{a}:{e}]"
            act = tag.get("act", "fp")
            try:
                st = storage(code, bits, self.space, w.shape[1], activations=self.activations,
                             act=act)
            except ConfigError as err:
                raise ConfigError(f"{site}: {err}") from None
            tag["storage"] = st.kind
            w8a8 = st.kernel == "linear_u8s8"
            group = (None if act == "int8" else fitted_space(self.space, w.shape[1]).group)
            report.append({"linear": tag["linear"], "rows": list(rows), "code": code,
                           "bits": bits, "storage": st.kind, "kernel": st.kernel,
                           "group": group, "act": "int8" if w8a8 else act})
            if act == "fp16":
                _round_half(gm, node, halves)
            if st.kind == "fp16":
                w = _own_weight(gm, node, tag["linear"])
                with torch.no_grad():
                    w.copy_(dequantized(w, Candidate("fp", 16), self.space, site))
            elif st.kind in ("int8", "int4", "dequant"):
                ins.quantize_input(node, 1, st.spec, f"{site}.weight", weight=True)
                if w8a8:
                    ins.quantize_input(node, 0, W8A8.activation, f"{site}:input", weight=False)
            elif st.kind in ("bcq", "codes"):
                w32 = w.detach().to(torch.float32)
                fit = bit_planes(w32, st, bits, site)
                ref = LinearRef(node, tag["linear"], wname, None, w32.shape[1], w32.shape[0])
                err = relative_error(w32, fit.dequantize())
                replace_with_bcq(gm, BCQSite(tag["role"], ref, node, fit, err, float("nan")))
                fitted += 1
        say(f"mixed precision: {len(todo)} blocks, {fitted} fitted as bit planes, "
            f"{time.perf_counter() - t0:.1f} s", enabled=self.progress and fitted > 0)
        changed = any(r["storage"] != "fp32" or r["act"] != "fp" for r in report)
        if changed:
            gm.graph.lint()
            gm.recompile()
        if report:
            gm.meta.setdefault(PRECISION_META, []).extend(report)
        return PassResult(gm, changed)
