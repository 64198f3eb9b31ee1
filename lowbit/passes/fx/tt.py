"""TensorTrain (FX): each selected linear becomes trainable TT cores contracted in the graph.

    linear(x, W, b)  ->  A = reshape(einsum(core_0 .. core_{p-1}), [in, r])   (opt_einsum order)
    addmm(b, x, W)       B = reshape(einsum(core_p .. core_{d-1}), [r, out])
    mm(x, W)             y = matmul(matmul(x, A), B) + b                        form="merged"
                     or  y = flatten(einsum chain(unflatten(x), cores)) + b     form="chain"

    with TT.bits:    core_k  ->  TTCoreQuant_k(core_k)   (learnable scale, STE; lowbit.quant.tt)

The steps are ``lowbit.quant.tt.program`` translated op for op (aten.einsum, aten.reshape,
aten.matmul, aten.unflatten, aten.flatten); the fits come from ``plan_tt`` (written once for
both IRs, ``lowbit.passes.tt``). Per linear, beside its weight's owner module:
``<linear>.tt_core<k>`` (trainable ``nn.Parameter``s) and, with bits, the modules
``<linear>.tt_quant<k>`` (their ``scale`` trainable). ``A`` and ``B`` are computed from the
parameters on every call, so gradients reach the cores and scales; ``MaterializeTT``
(passes/fx/tt_materialize.py) replaces them by constants for inference. Every new node carries
``meta["lowbit_tt"] = {"layer", "step"}`` and a ``val`` (fake tensor); the report is
``gm.meta["lowbit_tt"]`` (one entry per layer). The float weight is deleted unless another op
still reads it (a tied weight). Linears whose weight is already TT are left alone, so a second
run reports ``modified=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch._guards import detect_fake_mode

from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.passes.fx.attach import attach, owner_of
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.tt import TT_META, TTSite, check_form, plan_tt, tt_rules
from lowbit.quant.tt import Step, TTCoreQuant, core_axis, program, step_shape

__all__ = ["TensorTrain", "drop_weight", "replace_with_tt", "tt_layers"]

aten = torch.ops.aten


def tt_layers(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Layer name -> its TT nodes (graph order) for the core subgraphs in ``gm``."""
    out: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        tag = n.meta.get(TT_META)
        if isinstance(tag, dict) and "step" in tag:
            out.setdefault(tag["layer"], []).append(n)
    return out


def _attach_module(gm: fx.GraphModule, dotted: str, module: nn.Module) -> str:
    owner, attr = owner_of(gm, dotted)
    base, i = attr, 0
    while hasattr(owner, attr):
        i += 1
        attr = f"{base}_{i}"
    owner.add_module(attr, module)
    return dotted.rpartition(".")[0] + "." + attr if owner is not gm else attr


def _bias(node: fx.Node) -> fx.Node | None:
    if node.target == aten.linear.default:
        return node.args[2] if len(node.args) > 2 else None
    return node.args[0] if node.target == aten.addmm.default else None


def _emit(g: fx.Graph, s: Step, a: list) -> fx.Node:
    if s.op == "einsum":
        return g.call_function(aten.einsum.default, (s.arg, a))
    if s.op == "reshape":
        return g.call_function(aten.reshape.default, (a[0], list(s.arg)))
    if s.op == "matmul":
        return g.call_function(aten.matmul.default, (a[0], a[1]))
    if s.op == "unflatten":
        return g.call_function(aten.unflatten.int, (a[0], -1, list(s.arg)))
    return g.call_function(aten.flatten.using_ints, (a[0], -s.arg[0], -1))


def drop_weight(gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> None:
    """Erase the unread ``get_attr`` nodes among ``nodes`` and delete their tensors when no
    other ``get_attr`` reads them."""
    g = gm.graph
    for w in nodes:
        if w.op != "get_attr" or w.users:
            continue
        g.erase_node(w)
        if not any(x.op == "get_attr" and x.target == w.target for x in g.nodes):
            owner, attr = owner_of(gm, str(w.target))
            for table in (owner._parameters, owner._buffers):
                table.pop(attr, None)


def replace_with_tt(gm: fx.GraphModule, site: TTSite, form: str) -> None:
    """``site.ref.node`` -> its TT cores and ``form``'s contraction (module docstring)."""
    node, fit, stem = site.ref.node, site.fit, site.ref.name
    g = gm.graph
    d = len(fit.cores)
    x_val = site.x.meta.get("val")
    mode = detect_fake_mode([x_val]) if x_val is not None else None
    env: dict[str, fx.Node] = {"x": site.x}
    vals: dict[str, object] = {"x": x_val}

    def tag(n: fx.Node, step: str, val: object = None) -> fx.Node:
        n.meta[TT_META] = {"layer": stem, "step": step}
        for key in ("nn_module_stack", "stack_trace"):
            if key in node.meta:
                n.meta[key] = node.meta[key]
        if val is not None:
            n.meta["val"] = val
        return n

    with g.inserting_before(node):
        for k, core in enumerate(fit.cores):
            target = attach(gm, f"{stem}.tt_core{k}", core.clone(), param=True)
            gm.get_parameter(target).requires_grad_(True)
            fake = mode.from_tensor(gm.get_parameter(target)) if mode else None
            c = tag(g.get_attr(target), f"core{k}", fake)
            if site.spec.bits:
                quant = TTCoreQuant(core, site.spec.bits, core_axis(k, d), f"{stem}.core{k}")
                c = tag(g.call_module(_attach_module(gm, f"{stem}.tt_quant{k}", quant), (c,)),
                        f"core{k}_q", fake)
            env[f"core{k}"], vals[f"core{k}"] = c, fake
        for s in program(fit, form, site.rows):
            new = _emit(g, s, [env[i] for i in s.inputs])
            val = None
            if mode is not None:
                with mode:
                    val = torch.empty(step_shape(s, [vals[i].shape for i in s.inputs]))
            env[s.out], vals[s.out] = tag(new, s.out, val), val
        y = env["y"]
        bias = _bias(node)
        if bias is not None:
            y = tag(g.call_function(aten.add.Tensor, (y, bias)), "bias", node.meta.get("val"))
    y.meta[TT_META]["out"] = True
    node.replace_all_uses_with(y)
    inputs = list(node.all_input_nodes)
    g.erase_node(node)
    drop_weight(gm, inputs)


@dataclasses.dataclass(frozen=True)
class TensorTrain(Pass):
    """Replace the linears ``rules`` select with TT cores (module docstring).

    ``rules``: ``((key, TT), ...)`` (``lowbit.passes.tt.tt_rules`` makes them from one TT and
    a list of roles / name globs); ``form``: "merged" or "chain"; ``rows``: the rows of x the
    "chain" order is chosen for (None: the graph's, else 128)."""

    in_place = True
    rules: tuple[tuple[str, TT], ...]
    form: str = "merged"
    rows: int | None = None
    progress: bool = True

    def requires(self, gm: fx.GraphModule) -> None:
        if not isinstance(gm, fx.GraphModule):
            raise ConfigError(f"TensorTrain (FX) takes an fx.GraphModule, got "
                              f"{type(gm).__name__}")
        check_form(self.form, self.rows)
        tt_rules(self.rules)

    def call(self, gm: fx.GraphModule) -> PassResult:
        sites = plan_tt(gm, self.rules, rows=self.rows, progress=self.progress)
        for site in sites:
            replace_with_tt(gm, site, self.form)
        if sites:
            gm.graph.lint()
            gm.recompile()
            gm.meta.setdefault(TT_META, []).extend(s.summary(self.form) for s in sites)
        return PassResult(gm, bool(sites))
