"""InsertQDQ: quantize the tensors a Recipe names, in standard ONNX QDQ form.

The ONNX twin of FX's InsertFakeQuant + ConvertToQDQ (there is no fake-quant stage in ONNX:
weights need no calibration, and activation ranges come from ``calibrate`` on the float
graph first). With ``W`` a weight, ``x`` an activation, ``s``/``z`` from ``lowbit.quant``:

    weight      MatMul(x, W)   ->  MatMul(x, DequantizeLinear(W_q, s_w, z_w[, axis][, block]))
                W_q = quantize_weight(W^T)^T   (per tensor / per channel / per group of K;
                int8, or INT4 for <= 4-bit grids)
    static      x              ->  DequantizeLinear(QuantizeLinear(x, s, z), s, z)
                                   s, z = qparams_from_range(observed lo, hi)
    per-token   x              ->  s, z = choose_qparams_per_token(x);  (round(x / s) + z ... ) * s
                                   (float math, as the QDQ export writes it)

Every form is produced by the very translation functions ``lowbit.backends.onnxruntime`` uses to
export FX graphs (run through torch's ONNX op recorder), then cleaned by the same passes
(``fold_weight_transposes``, ``pack_int4_weights``), so an ONNX-quantized file has the same
ops as an FX-quantized, exported one. Inserted nodes carry ``metadata_props["lowbit.site"]``
(the site name, as FX names its quantizers: ``<linear>.weight``, ``<linear>:input``,
``<linear>:output``, ``block<i>.residual<j>``).

Sites come from the TransformerMap by role, with FX's own rules (``InsertFakeQuant``'s role
checks, ``ignore`` globs and site enumeration, so names and choices match by construction);
one quantizer per tensor (q, k and v share their input's). Skips on purpose, with a reason in
``Plan.skipped``: tensors already quantized (so a second run reports ``modified=False``), and
output sites that are graph outputs. Refuses: a model below opset 21 (``upgrade_opset``), a
static activation site without calibrated qparams (CalibrationError), a PerGroup size that
does not divide K, specs FX refuses (static non-per-tensor or dynamic non-8-bit activations).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import torch

from lowbit.backends import onnxruntime as ort_backend
from lowbit.backends.onnxruntime import (
    _add_initializer,   # TODO(lead): make public (shared initializer helper)
    _drop_if_unused,    # TODO(lead): make public
    fold_weight_transposes,
    pack_int4_weights,
)
from lowbit.config import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec, Recipe
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.fx.insert_fake_quant import InsertFakeQuant, _ignored
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.graph_utils import (
    QSITE_KEY, WeightSource, const_array, data_users, is_op, is_quantized, linear_output,
    order, producer, weight_source,
)
from lowbit.passes.onnx.spot import find_transformer
from lowbit.passes.patterns import TransformerMap
from lowbit.quant.numerics import quantize_weight, weight_grid

__all__ = ["InsertQDQ", "Plan", "Site", "plan_sites", "QDQ_OPSET"]

QDQ_OPSET = 21
_F32, _I8, _U8 = ir.DataType.FLOAT, ir.DataType.INT8, ir.DataType.UINT8


@dataclasses.dataclass(eq=False)
class Site:
    """One tensor to quantize. ``readers`` are the (node, input index) pairs to rewire; None
    means every reader (an output site). Weights carry their ``source``."""

    name: str
    spec: QuantSpec
    value: ir.Value
    readers: list | None = None
    source: WeightSource | None = None
    out_in: bool = True


@dataclasses.dataclass
class Plan:
    weights: list = dataclasses.field(default_factory=list)
    activations: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)    # (site, reason)

    def static(self) -> list[Site]:
        return [s for s in self.activations if not s.spec.dynamic]


def _act_quantized(x: ir.Value) -> bool:
    p = producer(x)
    return p is not None and (is_quantized(p) or is_op(p, "DequantizeLinear"))


def _check_activation(spec: QuantSpec, site: str) -> None:
    """What ``FakeQuantize`` refuses for activations, refused alike."""
    if spec.dynamic and spec.bits != 8:
        raise ConfigError(f"{site}: dynamic activation quantization is int8 only (as "
                          f"quantized_decomposed per-token ops are), got bits={spec.bits}")
    if not spec.dynamic and not isinstance(spec.granularity, PerTensor):
        raise ConfigError(f"{site}: static activation granularity "
                          f"{type(spec.granularity).__name__} is not supported yet")


def plan_sites(tmap: TransformerMap, recipe: Recipe) -> Plan:
    """The tensors ``recipe`` quantizes in the graph ``tmap`` was spotted on."""
    fx_rules = InsertFakeQuant(recipe)
    fx_rules._check_roles(tmap)
    plan, shared = Plan(), {}

    def weight(name, node, index, spec, out_in):
        src = weight_source(node, index)
        if src is None or src.value is None:
            plan.skipped.append((name, src.refused if src else "weight is not an initializer"))
        elif not src.quantized:
            plan.weights.append(Site(name, spec, src.value, source=src, out_in=out_in))

    def act_input(name, node, spec):
        x = node.inputs[0]
        if _act_quantized(x):
            return
        _check_activation(spec, name)
        if (site := shared.get((x, spec))) is None:
            site = shared[(x, spec)] = Site(name, spec, x, readers=[])
            plan.activations.append(site)
        site.readers.append((node, 0))

    def act_output(name, value, spec):
        users = data_users(value)
        if users and all(is_quantized(u) or is_op(u, "QuantizeLinear") for u in users):
            return
        if value.is_graph_output():
            plan.skipped.append((name, "a graph output; left in float"))
            return
        _check_activation(spec, name)
        plan.activations.append(Site(name, spec, value))

    for role, ref in tmap.linears():
        if role not in recipe.roles or _ignored(recipe, role, ref.name):
            continue
        if recipe.weight is not None:
            weight(f"{ref.name}.weight", ref.node, 1, recipe.weight, ref.weight_layout == "out_in")
        if recipe.activation is not None:
            act_input(f"{ref.name}:input", ref.node, recipe.activation)
    site_spec = recipe.sites_activation or recipe.activation
    linears = {ref.node: ref for _, ref in tmap.linears()}
    for kind in recipe.sites:
        for node, name in fx_rules._site_nodes(tmap, kind):
            if kind == "embedding":
                weight(name, node, 0, recipe.weight or site_spec, True)
            else:
                value = linear_output(linears[node]) if node in linears else node.outputs[0]
                act_output(name, value, site_spec)
    return plan


@contextlib.contextmanager
def _recording():
    """Run onnxscript ops (the backend's translations) into a list of ir.Nodes, with the
    recorder torch's exporter runs them with during ``export_onnx``."""
    import onnxscript
    from torch.onnx._internal.exporter._building import OpRecorder

    rec = OpRecorder(onnxscript.values.Opset("", QDQ_OPSET), {})
    with onnxscript.evaluator.default_as(rec):
        yield rec


@dataclasses.dataclass(frozen=True)
class InsertQDQ(Pass):
    """Quantize ``recipe``'s tensors (see the module docstring). ``activation_qparams`` maps
    static activation site names to (scale, zero point), as ``calibrate`` returns them."""

    recipe: Recipe
    activation_qparams: Mapping = dataclasses.field(default_factory=dict)

    def requires(self, model: ir.Model) -> None:
        opset = model.opset_imports.get("", 0)
        if opset < QDQ_OPSET:
            raise ConfigError(f"InsertQDQ emits opset-{QDQ_OPSET} QDQ ops (INT4, blocked "
                              f"scales); the model is at opset {opset}: convert it with "
                              f"lowbit.passes.onnx.upgrade_opset(model, {QDQ_OPSET})")

    def call(self, model: ir.Model) -> PassResult:
        plan = plan_sites(find_transformer(model), self.recipe)
        if missing := [s.name for s in plan.static() if s.name not in self.activation_qparams]:
            raise CalibrationError(f"{len(missing)} static activation site(s) have no calibrated "
                                   f"range, e.g. {missing[0]!r}: run "
                                   f"lowbit.passes.onnx.calibrate first")
        graph = model.graph
        for site in plan.weights:
            self._weight(graph, site)
        for site in plan.activations:
            self._activation(graph, site)
        if plan.weights:
            fold_weight_transposes(graph)
            pack_int4_weights(graph)
        return PassResult(model, bool(plan.weights or plan.activations))

    # ---- weights -------------------------------------------------------------------------
    def _weight(self, graph: ir.Graph, site: Site) -> None:
        src, spec = site.source, site.spec
        w = torch.from_numpy(np.array(const_array(src.value), dtype=np.float32))
        w_q, scale, zp = quantize_weight((w if site.out_in else w.T).contiguous(), spec, site.name)
        dtype = _I8 if w_q.dtype == torch.int8 else _U8
        qmin, qmax = weight_grid(spec)
        base = src.value.name
        q = _add_initializer(graph, f"{base}_{'i' if dtype == _I8 else 'u'}{spec.bits}",
                             w_q.numpy(), dtype)
        q.metadata_props.update(src.value.metadata_props)
        g = spec.granularity
        shape = (-1,) if isinstance(g, PerChannel) else (scale.shape[0], -1)
        if not isinstance(g, PerTensor):
            s = _add_initializer(graph, f"{base}_scale", scale.reshape(shape).numpy(), _F32)
            z = _add_initializer(graph, f"{base}_zero_point",
                                 zp.reshape(shape).numpy().astype(dtype.numpy()), dtype)
        with _recording() as rec:
            if isinstance(g, PerTensor):
                y = ort_backend.dequantize_per_tensor(q, float(scale), int(zp), qmin, qmax, dtype)
            elif isinstance(g, PerChannel):
                y = ort_backend.dequantize_per_channel(q, s, z, g.axis % 2, qmin, qmax, dtype)
            else:
                assert isinstance(g, PerGroup)
                y = ort_backend.dequantize_per_channel_group(q, s, z, qmin, qmax, dtype, g.size,
                                                             _F32)
            if not site.out_in:
                y = ort_backend.op.Transpose(y, perm=[1, 0])
        self._place(graph, rec.nodes, site.name, before=src.reader)
        src.reader.replace_input_with(src.index, y)
        _drop_if_unused(graph, src.value)

    # ---- activations ---------------------------------------------------------------------
    def _activation(self, graph: ir.Graph, site: Site) -> None:
        x, spec = site.value, site.spec
        dtype = _I8 if spec.symmetric else _U8
        b = ort_backend
        with _recording() as rec:
            if spec.dynamic and isinstance(spec.granularity, PerToken):
                choose = (b.choose_qparams_per_token if spec.symmetric
                          else b.choose_qparams_per_token_asymmetric)
                s, z = choose(x, _I8)
                q = b.quantize_per_token(x, s, z, -128, 127, _I8)
                y = b.dequantize_per_token(q, s, z, -128, 127, _I8, _F32)
            else:
                if spec.dynamic:
                    choose = (b.choose_qparams_symmetric_tensor if spec.symmetric
                              else b.choose_qparams_tensor)
                    s, z = choose(x, spec.qmin, spec.qmax, float(torch.finfo(torch.float32).eps),
                                  dtype)
                else:
                    scale, zp = self.activation_qparams[site.name]
                    s, z = float(scale), int(zp)
                q = b.quantize_per_tensor(x, s, z, spec.qmin, spec.qmax, dtype)
                y = b.dequantize_per_tensor(q, s, z, spec.qmin, spec.qmax, dtype)
        new = set(rec.nodes)
        if site.readers is not None:
            self._place(graph, rec.nodes, site.name,
                        before=min((n for n, _ in site.readers), key=order))
            for node, idx in site.readers:
                node.replace_input_with(idx, y)
        else:
            users = [u for u in x.uses() if u.node not in new]
            self._place(graph, rec.nodes, site.name, after=x.producer())
            for use in users:
                use.node.replace_input_with(use.idx, y)

    # ---- placing recorded nodes ----------------------------------------------------------
    @staticmethod
    def _place(graph: ir.Graph, nodes: list[ir.Node], site: str, *, before=None,
               after=None) -> None:
        """Name and tag ``nodes``, lift the scales / zero points of Q/DQ nodes into named
        initializers, and insert the rest next to ``before`` / ``after``."""
        lifted, keep = {}, []
        for k, node in enumerate(nodes):
            node.name = f"lowbit/{site}/{node.op_type}_{k}"
            node.metadata_props[QSITE_KEY] = site
            for i, v in enumerate(node.outputs):
                v.name = f"{site}/{node.op_type}_{k}" + (f"_{i}" if i else "")
            uses = node.outputs[0].uses() if is_op(node, "Constant") else []
            if uses and all(is_op(u.node, "QuantizeLinear", "DequantizeLinear")
                            and u.idx in (1, 2) for u in uses):
                arr = const_array(node.outputs[0])
                role = "scale" if uses[0].idx == 1 else "zero_point"
                key = (role, arr.dtype.str, arr.tobytes())
                if key not in lifted:
                    dtype = ir.DataType.from_numpy(arr.dtype)
                    lifted[key] = _add_initializer(graph, f"{site}_{role}", arr, dtype)
                for u in uses:
                    u.node.replace_input_with(u.idx, lifted[key])
            else:
                keep.append(node)
        if before is not None:
            graph.insert_before(before, keep)
        else:
            graph.insert_after(after, keep)
