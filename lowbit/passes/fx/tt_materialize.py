"""MaterializeTT (FX): a TT layer's core subgraph becomes two plain linears with constant halves.

    cores [-> TTCoreQuant] -> A [in, r], B [r, out];  y = (x A) B + b
        ->   y = linear(linear(x, A^T), B^T, b)        A^T, B^T: get_attr constants

``A`` and ``B`` are contracted once from the current (trained, fake-quantized when the layer
has bits) cores with ``TTWeight.halves``, the same contraction the graph ran, and registered
as frozen parameters ``<linear>.tt_a`` [r, in] and ``<linear>.tt_b`` [out, r] in ``aten.linear``'s
[out, in] layout; the cores, quantizer modules and contraction nodes go. Every recipe
(``lowbit.quantize``: W8A8, W4A16, BCQ ...) and the TVM lowering see plain linears; ``tt_a`` /
``tt_b`` are never TT-compressed again (``lowbit.passes.tt``). Works on either form ("merged",
"chain"): the result is the merged halves. The ``gm.meta["lowbit_tt"]`` entries of the layers
get ``"materialized": True``. A graph without TT core subgraphs is left alone.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx
from torch._guards import detect_fake_mode

from lowbit.errors import ConfigError
from lowbit.passes.fx.attach import attach
from lowbit.passes.fx.tt import drop_weight, tt_layers
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.tt import TT_META
from lowbit.quant.tt import TTWeight

__all__ = ["MaterializeTT"]

aten = torch.ops.aten


def _halves(gm: fx.GraphModule, nodes: list[fx.Node], entry: dict
            ) -> tuple[torch.Tensor, torch.Tensor]:
    cores = {}
    for n in nodes:
        step = n.meta[TT_META]["step"]
        if n.op == "get_attr" and step.startswith("core"):
            cores.setdefault(step, gm.get_parameter(n.target).detach())
    for n in nodes:                      # quantized cores replace the float ones
        step = n.meta[TT_META]["step"]
        if n.op == "call_module" and step.endswith("_q"):
            src = step[:-2]
            cores[src] = gm.get_submodule(n.target)(cores[src]).detach()
    fit = TTWeight(tuple(cores[f"core{k}"] for k in range(len(cores))),
                   tuple(entry["in_modes"]), tuple(entry["out_modes"]))
    with torch.no_grad():
        return fit.halves()


def _materialize(gm: fx.GraphModule, layer: str, nodes: list[fx.Node], entry: dict) -> None:
    g = gm.graph
    out = next(n for n in nodes if n.meta[TT_META].get("out"))
    first = next(n for n in nodes if n.meta[TT_META]["step"] in ("h", "x_modes"))
    x = first.args[0]
    bias = next((n.args[1] for n in nodes if n.meta[TT_META]["step"] == "bias"), None)
    a, b = _halves(gm, nodes, entry)
    a_t = attach(gm, f"{layer}.tt_a", a.t().contiguous(), param=True)
    b_t = attach(gm, f"{layer}.tt_b", b.t().contiguous(), param=True)
    with g.inserting_before(out):
        h = g.call_function(aten.linear.default, (x, g.get_attr(a_t)))
        y = g.call_function(aten.linear.default,
                            (h, g.get_attr(b_t)) + ((bias,) if bias is not None else ()))
    x_val = x.meta.get("val") if isinstance(x, fx.Node) else None
    mode = detect_fake_mode([x_val]) if x_val is not None else None
    if mode is not None:
        with mode:
            h.meta["val"] = torch.empty(*x_val.shape[:-1], a.shape[1])
    if "val" in out.meta:
        y.meta["val"] = out.meta["val"]
    for n in (h, y):
        for key in ("nn_module_stack", "stack_trace"):
            if key in out.meta:
                n.meta[key] = out.meta[key]
    out.replace_all_uses_with(y)
    for n in reversed(nodes):
        if n.op != "get_attr":
            g.erase_node(n)
            if n.op == "call_module":
                gm.delete_submodule(n.target)
    drop_weight(gm, [n for n in nodes if n.op == "get_attr"])


@dataclasses.dataclass(frozen=True)
class MaterializeTT(Pass):
    """Replace every TT core subgraph by two constant linears (module docstring)."""

    in_place = True

    def requires(self, gm: fx.GraphModule) -> None:
        if not isinstance(gm, fx.GraphModule):
            raise ConfigError(f"MaterializeTT takes an fx.GraphModule, got {type(gm).__name__}")

    def call(self, gm: fx.GraphModule) -> PassResult:
        layers = tt_layers(gm)
        entries = {e["linear"]: e for e in gm.meta.get(TT_META, [])}
        for layer, nodes in layers.items():
            if layer not in entries:
                raise ConfigError(f"MaterializeTT: layer {layer!r} has TT nodes but no entry in "
                                  f"gm.meta['lowbit_tt'] (its modes); was the meta dropped?")
            _materialize(gm, layer, nodes, entries[layer])
            entries[layer]["materialized"] = True
        if layers:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, bool(layers))
