"""InsertQDQ: quantize the tensors a Recipe names, in standard ONNX QDQ form.

The ONNX twin of FX's InsertFakeQuant + ConvertToQDQ (there is no fake-quant stage in ONNX:
weights need no calibration, and activation ranges come from ``calibrate`` on the float
graph first). With ``W`` a weight, ``x`` an activation, ``s``/``z`` from ``lowbit.quant``:

    weight      MatMul(x, W)   ->  MatMul(x, DequantizeLinear(W_q, s_w, z_w[, axis][, block]))
                W_q = quantize_weight(W^T)^T   (per tensor / per channel / per group of K;
                int8, or INT4 for <= 4-bit grids)
    static      x              ->  DequantizeLinear(QuantizeLinear(x, s, z), s, z)
                                   s, z = qparams_from_range(observed lo, hi)
    PEG         x              ->  the same per axis (axis = last): s [C], z [C] constant
                                   within each of K channel groups (``lowbit.quant.peg``)
    per-token   x              ->  s, z = choose_qparams_per_token(x);  (round(x / s) + z ... ) * s
                                   (float math, as the QDQ export writes it)

Every form is produced by the very translation functions ``export_onnx`` uses to export FX
graphs (``qdq_ops``, run through torch's ONNX op recorder), then cleaned by the same passes
(``qdq_cleanup``: ``fold_weight_transposes``, ``pack_int4_weights``), so an ONNX-quantized
file has the same ops as an FX-quantized, exported one. Inserted nodes carry
``metadata_props["lowbit.site"]`` (the site name, as FX names its quantizers:
``<linear>.weight``, ``<linear>:input``, ``<linear>:output``, ``block<i>.residual<j>``).

Sites come from the TransformerMap by role, with FX's own rules (``InsertFakeQuant``'s role
checks, ``ignore`` globs and site enumeration, so names and choices match by construction);
one quantizer per tensor (q, k and v share their input's), one integer copy per shared weight.
Both MatMuls of every materialized tensor-train layer are sites too, by the original linear's
role (``quantize_tt``: FX's ``QuantizeTTHalves``), so calibration observes their inputs.
Skips on purpose: tensors already quantized (so a second run reports ``modified=False``); with
a reason in ``Plan.skipped``: output sites that are graph outputs, and everything spotting left
unclassified (a MatMul whose weight is computed in the graph, a linear outside any block...).
Refuses: a model below opset 21 (``upgrade_opset``), a static activation site without
calibrated qparams (CalibrationError), a PerGroup size that does not divide K, a PEG group
count that does not divide the hidden size, specs FX refuses (dynamic non-8-bit activations).
PEG's range-based permutation is folded before this pass (``peg_permute.PegPermute``, as
``quantize_onnx`` runs it), so permuted sites get contiguous groups; given qparams of an
unfolded site (``calibrate`` alone), each site groups its channels by its own sorted ranges
through the per-channel scale vectors: the same function without the contiguous layout a group
GEMM wants.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import torch

from lowbit.config import (
    PerChannel,
    PerEmbeddingGroup,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    Recipe,
)
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx import qdq_ops
from lowbit.passes.onnx.edit import add_initializer, drop_if_unused
from lowbit.passes.onnx.graph_utils import (
    QSITE_KEY,
    WeightSource,
    const_array,
    data_users,
    is_op,
    is_quantized,
    linear_output,
    order,
    producer,
    weight_source,
)
from lowbit.passes.onnx.qdq_cleanup import fold_weight_transposes, pack_int4_weights
from lowbit.passes.onnx.quantize_tt import TTHalf, materialized_halves
from lowbit.passes.onnx.spot import find_transformer
from lowbit.passes.patterns import TransformerMap
from lowbit.passes.sites import check_roles, ignored, quantized_linears, site_nodes
from lowbit.quant.fake_quant import check_activation_spec
from lowbit.quant.numerics import quantize_weight, weight_grid
from lowbit.quant.peg import check_groups

__all__ = ["QDQ_OPSET", "InsertQDQ", "Plan", "QDQRewriter", "Site", "plan_model", "plan_sites"]

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


def plan_model(model: ir.Model, recipe: Recipe) -> Plan:
    """``plan_sites`` over ``model``: its TransformerMap and its materialized TT halves."""
    return plan_sites(find_transformer(model), recipe, materialized_halves(model))


def plan_sites(tmap: TransformerMap, recipe: Recipe, tt_halves: Sequence[TTHalf] = ()) -> Plan:
    """The tensors ``recipe`` quantizes in the graph ``tmap`` was spotted on; ``tt_halves``
    (``quantize_tt.materialized_halves`` of that graph) adds both halves of each TT layer."""
    check_roles(recipe, tmap)
    plan, shared = Plan(skipped=[(n, f"spotting: {why}") for n, why in tmap.unclassified]), {}
    taken: dict[str, int] = {}
    done: set = set()        # (node, input index) already planned (or refused)

    def unique(name):   # a module run twice (shared layers) gives two sites one name
        taken[name] = taken.get(name, -1) + 1
        return f"{name}#{taken[name]}" if taken[name] else name

    def weight(name, node, index, spec, out_in):
        done.add((node, index))
        src = weight_source(node, index)
        if src is None or src.value is None:
            plan.skipped.append((name, src.refused if src else "weight is not an initializer"))
        elif not src.quantized:
            plan.weights.append(Site(unique(name), spec, src.value, source=src, out_in=out_in))

    def check_spec(spec, name, x):
        check_activation_spec(spec, name)
        if isinstance(spec.granularity, PerEmbeddingGroup) and x.shape is not None \
                and isinstance(x.shape[-1], int):
            check_groups(x.shape[-1], spec.granularity.groups, name)

    def act_input(name, node, spec):
        done.add((node, 0))
        x = node.inputs[0]
        if _act_quantized(x):
            return
        check_spec(spec, name, x)
        if (site := shared.get((x, spec))) is None:
            site = shared[(x, spec)] = Site(unique(name), spec, x, readers=[])
            plan.activations.append(site)
        site.readers.append((node, 0))

    def act_output(name, value, spec):
        users = data_users(value)
        if users and all(is_quantized(u) or is_op(u, "QuantizeLinear") for u in users):
            return
        if value.is_graph_output():
            plan.skipped.append((name, "a graph output; left in float"))
            return
        check_spec(spec, name, value)
        plan.activations.append(Site(unique(name), spec, value))

    for role, ref in quantized_linears(recipe, tmap):
        if recipe.weight is not None:
            weight(f"{ref.name}.weight", ref.node, 1, recipe.weight, ref.weight_layout == "out_in")
        if (act := recipe.override(role, recipe.activation)) is not None:
            act_input(f"{ref.name}:input", ref.node, act)
    site_spec = recipe.sites_activation or recipe.activation
    linears = {ref.node: ref for _, ref in tmap.linears()}
    for kind in recipe.sites:
        for node, name in site_nodes(recipe, tmap, kind):
            if kind == "embedding":
                weight(name, node, 0, recipe.weight or site_spec, True)
            else:
                value = linear_output(linears[node]) if node in linears else node.outputs[0]
                act_output(name, value, recipe.override(kind, site_spec))
    if recipe.weight is None or not tt_halves:   # QuantizeTTHalves' rule: weights or nothing
        return plan
    outputs = {s.value for s in plan.activations if s.readers is None}
    covered = set()
    for half in tt_halves:
        node = half.ref.node
        if half.role not in recipe.roles or ignored(recipe, half.role, half.layer):
            continue
        covered.add(node.name)
        if (node, 1) not in done:      # a half spotting gave a role has its sites already
            weight(half.name, node, 1, recipe.weight, half.ref.weight_layout == "out_in")
        act = recipe.override(half.role, recipe.activation)
        if act is not None and (node, 0) not in done and node.inputs[0] not in outputs:
            act_input(f"{half.name}:input", node, act)
    plan.skipped = [(n, why) for n, why in plan.skipped if n not in covered]
    return plan


@contextlib.contextmanager
def _recording():
    """Run onnxscript ops (``qdq_ops``' translations) into a list of ir.Nodes, with the
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

    in_place = True

    recipe: Recipe
    activation_qparams: Mapping = dataclasses.field(default_factory=dict)

    def requires(self, model: ir.Model) -> None:
        opset = model.opset_imports.get("", 0)
        if opset < QDQ_OPSET:
            raise ConfigError(f"InsertQDQ emits opset-{QDQ_OPSET} QDQ ops (INT4, blocked "
                              f"scales); the model is at opset {opset}: convert it with "
                              f"lowbit.passes.onnx.upgrade_opset(model, {QDQ_OPSET})")

    def call(self, model: ir.Model) -> PassResult:
        plan = plan_model(model, self.recipe)
        if missing := [s.name for s in plan.static() if s.name not in self.activation_qparams]:
            raise CalibrationError(f"{len(missing)} static activation site(s) have no calibrated "
                                   f"range, e.g. {missing[0]!r}: run "
                                   f"lowbit.passes.onnx.calibrate first")
        rw = QDQRewriter(model.graph, self.activation_qparams)
        for site in plan.weights:
            rw.weight(site)
        for site in plan.activations:
            rw.activation(site)
        if plan.weights:
            fold_weight_transposes(model.graph)
            pack_int4_weights(model.graph)
        if len(rw.done) < len(plan.weights):   # a shared weight's readers may precede its DQ
            model.graph.sort()
        return PassResult(model, bool(plan.weights or plan.activations))


class QDQRewriter:
    """Inserts the quantizers into one graph; names every new node and value uniquely."""

    def __init__(self, graph: ir.Graph, qparams: Mapping):
        self.graph, self.qparams = graph, qparams
        self.done: dict = {}     # (initializer, spec, layout) -> dequantized weight value
        self.node_names = {n.name for n in graph}
        self.value_names = set(graph.initializers) | {v.name for v in graph.inputs} | {
            v.name for n in graph for v in n.outputs}

    # ---- weights -------------------------------------------------------------------------
    def weight(self, site: Site) -> None:
        graph, src, spec = self.graph, site.source, site.spec
        key = (src.value, spec, site.out_in)
        if key in self.done:  # a weight shared by several linears (ALBERT): one integer copy
            src.reader.replace_input_with(src.index, self.done[key])
            drop_if_unused(graph, src.value)
            return
        w = torch.from_numpy(np.array(const_array(src.value), dtype=np.float32))
        w_q, scale, zp = quantize_weight((w if site.out_in else w.T).contiguous(), spec, site.name)
        dtype = _I8 if w_q.dtype == torch.int8 else _U8
        qmin, qmax = weight_grid(spec)
        base = src.value.name
        q = add_initializer(graph, f"{base}_{'i' if dtype == _I8 else 'u'}{spec.bits}",
                             w_q.numpy(), dtype)
        q.metadata_props.update(src.value.metadata_props)
        g = spec.granularity
        shape = (-1,) if isinstance(g, PerChannel) else (scale.shape[0], -1)
        if not isinstance(g, PerTensor):
            s = add_initializer(graph, f"{base}_scale", scale.reshape(shape).numpy(), _F32)
            z = add_initializer(graph, f"{base}_zero_point",
                                 zp.reshape(shape).numpy().astype(dtype.numpy()), dtype)
        b = qdq_ops
        with _recording() as rec:
            if isinstance(g, PerTensor):
                y = b.dequantize_per_tensor(q, float(scale), int(zp), qmin, qmax, dtype)
            elif isinstance(g, PerChannel):
                y = b.dequantize_per_channel(q, s, z, g.axis % 2, qmin, qmax, dtype)
            else:
                assert isinstance(g, PerGroup)
                y = b.dequantize_per_channel_group(q, s, z, qmin, qmax, dtype, g.size, _F32)
            if not site.out_in:
                y = b.op.Transpose(y, perm=[1, 0])
        self.place(rec.nodes, site.name, before=src.reader)
        src.reader.replace_input_with(src.index, y)
        drop_if_unused(graph, src.value)
        self.done[key] = y

    # ---- activations ---------------------------------------------------------------------
    def activation(self, site: Site) -> None:
        x, spec, b = site.value, site.spec, qdq_ops
        dtype = _I8 if spec.symmetric else _U8
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
                elif isinstance(spec.granularity, PerEmbeddingGroup):
                    scale, zp = self.qparams[site.name]
                    s = add_initializer(self.graph, f"{site.name}_scale",
                                        np.asarray(scale, np.float32).reshape(-1), _F32)
                    z = add_initializer(self.graph, f"{site.name}_zero_point",
                                        np.asarray(zp).reshape(-1).astype(dtype.numpy()), dtype)
                    axis = x.shape.rank() - 1 if x.shape is not None else -1
                    q = b.quantize_per_channel(x, s, z, axis, spec.qmin, spec.qmax, dtype)
                    y = b.dequantize_per_channel(q, s, z, axis, spec.qmin, spec.qmax, dtype)
                else:
                    scale, zp = self.qparams[site.name]
                    s, z = float(scale), int(zp)
                if spec.dynamic or not isinstance(spec.granularity, PerEmbeddingGroup):
                    q = b.quantize_per_tensor(x, s, z, spec.qmin, spec.qmax, dtype)
                    y = b.dequantize_per_tensor(q, s, z, spec.qmin, spec.qmax, dtype)
        new = set(rec.nodes)
        if site.readers is not None:
            self.place(rec.nodes, site.name, before=min((n for n, _ in site.readers), key=order))
            for node, idx in site.readers:
                node.replace_input_with(idx, y)
        else:
            users = [u for u in x.uses() if u.node not in new]
            self.place(rec.nodes, site.name, after=x.producer())
            for use in users:
                use.node.replace_input_with(use.idx, y)

    # ---- placing recorded nodes ----------------------------------------------------------
    @staticmethod
    def _unique(name: str, taken: set) -> str:
        unique, i = name, 0
        while unique in taken:
            i += 1
            unique = f"{name}_{i}"
        taken.add(unique)
        return unique

    def place(self, nodes: list[ir.Node], site: str, *, before=None, after=None) -> None:
        """Name and tag ``nodes``, lift the scales / zero points of Q/DQ nodes into named
        initializers, and insert the rest next to ``before`` / ``after``."""
        lifted, keep = {}, []
        for k, node in enumerate(nodes):
            node.name = self._unique(f"lowbit/{site}/{node.op_type}_{k}", self.node_names)
            node.metadata_props[QSITE_KEY] = site
            for i, v in enumerate(node.outputs):
                v.name = self._unique(f"{site}/{node.op_type}_{k}" + (f"_{i}" if i else ""),
                                      self.value_names)
            uses = node.outputs[0].uses() if is_op(node, "Constant") else []
            if uses and all(is_op(u.node, "QuantizeLinear", "DequantizeLinear")
                            and u.idx in (1, 2) for u in uses):
                arr = const_array(node.outputs[0])
                role = "scale" if uses[0].idx == 1 else "zero_point"
                key = (role, arr.dtype.str, arr.tobytes())
                if key not in lifted:
                    lifted[key] = add_initializer(self.graph, f"{site}_{role}", arr,
                                                   ir.DataType.from_numpy(arr.dtype))
                for u in uses:
                    u.node.replace_input_with(u.idx, lifted[key])
            else:
                keep.append(node)
        if before is not None:
            self.graph.insert_before(before, keep)
        else:
            self.graph.insert_after(after, keep)
