"""TensorTrain (ONNX): each selected linear becomes TT cores and a chain of standard ops.

    MatMul(X, W) [+ Add(b)]  ->  A = Reshape(Einsum(core_0 .. core_{p-1}), [in, r])
    Gemm(X, W, b)                B = Reshape(Einsum(core_p .. core_{d-1}), [r, out])
                                 Y = MatMul(MatMul(X, A), B) [+ Add(b)]       form="merged"
                             or  Y = Reshape(Einsum chain(Reshape(X, [0.., i_1..i_p]), cores),
                                             [0.., out]) [+ Add(b)]          form="chain"
    materialize=True:            A, B initializers;  Y = MatMul(MatMul(X, A), B) [+ Add(b)]
    TT.bits:                     core_k = DequantizeLinear(core_k_q, scale_k, axis=bond)

The steps are ``lowbit.quant.tt.program`` translated op for op (Einsum, Reshape, MatMul; every
Einsum one pairwise contraction in opt_einsum's cheapest order); the fits come from
``plan_tt`` (``lowbit.passes.tt``, shared with FX: the same weights give identical cores), so
onnxruntime's output equals the FX graph's within float32 round-off. Initializers:
``<linear>.tt_core<k>`` (float32, or int8 / int4 codes ``<linear>.tt_core<k>_q`` with a float32
scale per bond channel, ``TTCoreQuant``'s min-max start: what the FX graph computes before
training), ``<linear>.tt_a`` / ``tt_b`` with ``materialize``. Needs opset >= 13 (per-axis
DequantizeLinear; Einsum is 12), 21 for int4 cores. The report is
``metadata_props["lowbit.tt"]`` (``TT_PROP``, JSON): one entry per layer, as FX's
``gm.meta["lowbit_tt"]``, marked ``"materialized": true`` with ``materialize`` as
``MaterializeTT`` marks FX's; ``lowbit.quantize`` reads it to quantize both halves
(``quantize_tt``), and the file keeps it (``save_onnx`` / ``load_onnx``). The float weight
initializer (and a Transpose of it) is dropped when nothing else reads it. A model whose
selected linears are TT already is left alone (``modified=False``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir

from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.edit import add_initializer, remove_dead
from lowbit.passes.tt import TTSite, check_form, plan_tt, tt_rules
from lowbit.quant.tt import Step, TTCoreQuant, TTWeight, core_axis, program

__all__ = ["TT_INT4_OPSET", "TT_MIN_OPSET", "TT_PROP", "TensorTrain"]

TT_MIN_OPSET = 13     # per-axis DequantizeLinear (Einsum needs 12)
TT_INT4_OPSET = 21    # INT4 initializers
TT_PROP = "lowbit.tt"   # metadata_props key of the report (FX: gm.meta[TT_META])
_F32, _I64 = ir.DataType.FLOAT, ir.DataType.INT64


def _opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", 0))


class _Writer:
    """Appends the nodes and initializers of one layer, named after it."""

    def __init__(self, graph: ir.Graph, stem: str):
        self.graph, self.stem, self.nodes = graph, stem, []

    def init(self, suffix: str, array: np.ndarray, dtype: ir.DataType = _F32) -> ir.Value:
        return add_initializer(self.graph, f"{self.stem}.{suffix}", array, dtype)

    def op(self, op_type: str, inputs: list, out: str, **attributes) -> ir.Value:
        node = ir.node(op_type, inputs, attributes=attributes or None,
                       name=f"{self.stem}.tt_{out}")
        node.outputs[0].name = f"{self.stem}.tt_{out}"
        self.nodes.append(node)
        return node.outputs[0]


def _cores(w: _Writer, site: TTSite) -> dict[str, ir.Value]:
    """The core values: float initializers, or dequantized int8 / int4 codes."""
    fit, bits, d = site.fit, site.spec.bits, len(site.fit.cores)
    env = {}
    for k, core in enumerate(fit.cores):
        if not bits:
            env[f"core{k}"] = w.init(f"tt_core{k}", core.numpy())
            continue
        quant = TTCoreQuant(core, bits, core_axis(k, d), f"{site.ref.name}.core{k}")
        codes, scale = quant.integer(core)
        dtype = ir.DataType.INT8 if bits == 8 else ir.DataType.INT4
        q = w.init(f"tt_core{k}_q", codes.numpy(), dtype)
        s = w.init(f"tt_core{k}_scale", scale.numpy())
        env[f"core{k}"] = w.op("DequantizeLinear", [q, s], f"core{k}",
                               axis=core_axis(k, d))
    return env


def _emit(w: _Writer, s: Step, a: list[ir.Value], rank: int | None) -> ir.Value:
    if s.op == "einsum":
        return w.op("Einsum", a, s.out, equation=s.arg)
    if s.op == "matmul":
        return w.op("MatMul", a, s.out)
    if s.op == "reshape":
        shape = np.array(s.arg, np.int64)
    elif s.op == "unflatten":
        shape = np.array([0] * (rank - 1) + list(s.arg), np.int64)
    else:
        shape = np.array([0] * (rank - 1) + [s.arg[1]], np.int64)
    return w.op("Reshape", [a[0], w.init(f"tt_shape_{s.out}", shape, _I64)], s.out)


def _rewrite(model: ir.Model, site: TTSite, form: str, materialize: bool) -> None:
    graph, node, stem = model.graph, site.ref.node, site.ref.name
    if node.op_type == "Gemm":
        if (node.attributes.get_float("alpha", 1.0) != 1.0
                or node.attributes.get_float("beta", 1.0) != 1.0):
            raise ConfigError(f"{stem}: Gemm with alpha/beta != 1 is not converted to TT "
                              f"(leave it out of the rules)")
        bias = node.inputs[2] if len(node.inputs) > 2 else None
    else:
        bias = graph.initializers[site.ref.bias] if site.ref.bias is not None else None
    x = site.x
    rank = len(x.shape) if x.shape is not None else None
    if form == "chain" and not materialize and rank is None:
        raise ConfigError(f"{stem}: the chain form reshapes x by rank; x has no known shape "
                          f"(use form='merged')")
    w = _Writer(graph, stem)
    if materialize:
        fit = site.fit
        if site.spec.bits:
            d = len(fit.cores)
            fit = TTWeight(tuple(TTCoreQuant(c, site.spec.bits, core_axis(k, d))(c).detach()
                                 for k, c in enumerate(fit.cores)), fit.in_modes, fit.out_modes)
        a, b = fit.halves()
        env = {"A": w.init("tt_a", a.numpy()), "B": w.init("tt_b", b.numpy())}
        steps = [Step("matmul", ("x", "A"), "h"), Step("matmul", ("h", "B"), "y")]
    else:
        env, steps = _cores(w, site), program(site.fit, form, site.rows)
    env["x"] = x
    for s in steps:
        env[s.out] = _emit(w, s, [env[i] for i in s.inputs], rank)
    y = env["y"]
    if bias is not None:
        y = w.op("Add", [y, bias], "out")
    out: ir.Value = site.out
    y.shape, y.type = out.shape, out.type
    graph.insert_before(node, w.nodes)
    ir.convenience.replace_all_uses_with(out, y)
    if out.is_graph_output():
        outputs = graph.outputs
        for i, o in enumerate(outputs):
            if o is out:
                outputs[i] = y
        y.name, out.name = out.name, f"{out.name}_float"
    remove_dead(graph, out.producer())


@dataclasses.dataclass(frozen=True)
class TensorTrain(Pass):
    """Replace the linears ``rules`` select with TT cores and their contraction (module
    docstring); options as the FX pass's, plus ``materialize`` (A, B as initializers)."""

    in_place = True
    rules: tuple[tuple[str, TT], ...]
    form: str = "merged"
    rows: int | None = None
    materialize: bool = False
    progress: bool = True

    def requires(self, model: ir.Model) -> None:
        if not isinstance(model, ir.Model):
            raise ConfigError(f"TensorTrain (ONNX) takes an onnx_ir.Model, got "
                              f"{type(model).__name__}")
        check_form(self.form, self.rows)
        tt_rules(self.rules)
        need = max([TT_MIN_OPSET] + [TT_INT4_OPSET for _, s in self.rules if s.bits == 4])
        if _opset(model) < need:
            raise ConfigError(f"TT cores need opset >= {need} (per-axis DequantizeLinear"
                              f"{', INT4' if need == TT_INT4_OPSET else ''}); the model has "
                              f"{_opset(model)} (UpgradeOpset first)")

    def call(self, model: ir.Model) -> PassResult:
        sites = plan_tt(model, self.rules, rows=self.rows, progress=self.progress)
        for site in sites:
            _rewrite(model, site, self.form, self.materialize)
        if sites:
            form = "materialized" if self.materialize else self.form
            flag = {"materialized": True} if self.materialize else {}   # as MaterializeTT's
            report = json.loads(model.metadata_props.get(TT_PROP, "[]"))
            report += [s.summary(form) | flag for s in sites]
            model.metadata_props[TT_PROP] = json.dumps(report)
        return PassResult(model, bool(sites))
