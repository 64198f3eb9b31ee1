"""QuantizeFormats / InsertFormatQDQ (ONNX): every planned linear (one row block each, after
``SplitRowBlocks``) takes its block's format (``precision_plan.storage``), through the
existing ONNX quantizers. The ONNX twin of ``passes/fx/quantize_formats.py``::

    fp32                  unchanged
    fp16                  W <- fp16(W) (kept fp32; ``search.space.dequantized``)
    bcq                   MatMul [+ Add] -> lowbit.BCQLinear(x, planes, alpha, offset, b)
    codes                 the uniform codes of ``quantize_weight`` as BCQ planes + offset
                          (``precision_plan.bit_planes``: the same values) -> lowbit.BCQLinear
    int8 / int4 / dequant MatMul(x, W) -> MatMul(x, DequantizeLinear(W_q, s, z[, block]))
                          (+ QDQ(x), static u8 per tensor, ``recipes.W8A8``'s spec, for int8
                          blocks with input "int8", or with ``activations``: legacy)

and its input as the tag's ``act`` says: "int8" (int8 weights only, per channel whatever the
group) the QDQ(x) above; "fp16" ``Cast(Cast(x, to=FLOAT16), to=FLOAT)`` before the block's
MatMul / BCQLinear, whatever its format (one pair per input tensor, as on FX).

In two passes, as FX's fake-quant modules observe before they quantize: ``QuantizeFormats``
rewrites the float graph (fp16, bit planes: the planes of ``passes/onnx/bcq.py``, its
``BCQLinear`` function added to the model) and records each block's storage in its tag; the
caller then calibrates the int8 inputs (``activation_sites``) on that graph, weights of the
QDQ blocks still float; ``InsertFormatQDQ(space, qparams)`` writes the weight DequantizeLinear
(and the input Q/DQ) with ``InsertQDQ``'s rewriter, then folds weight transposes and packs
int4 as ``InsertQDQ`` does. Each block's choice is reported in ``model.meta
["lowbit_precision"]`` and ``metadata_props["lowbit.precision"]`` (linear, rows, code, bits,
storage, kernel, group, act: the input it gets, "int8" wherever it is quantized). Blocks
done are marked in their tags: second runs report ``modified=False``. A format with no ONNX
form would raise ConfigError naming it (every ``storage`` kind has one today).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import torch

from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.bcq import BCQSite, relative_error
from lowbit.passes.infra import Pass, PassResult
from lowbit.passes.onnx.bcq import BCQ_DOMAIN, bcq_function, bcq_nodes, replace_with_bcq
from lowbit.passes.onnx.edit import add_initializer
from lowbit.passes.onnx.insert_qdq import QDQRewriter, Site
from lowbit.passes.onnx.prune_subgroups import PLAN_KEY
from lowbit.passes.onnx.qdq_cleanup import fold_weight_transposes, pack_int4_weights
from lowbit.passes.onnx.shrink_axis import unique_name
from lowbit.passes.onnx.split_rows import linear_ref, planned_linears, weight_out_in
from lowbit.passes.precision_plan import bit_planes, fitted_space, storage
from lowbit.passes.view import view_of
from lowbit.passes.view.onnx_graph import is_op, number, producer, weight_source
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.recipes import W8A8
from lowbit.search.space import Candidate, SearchSpace, dequantized

__all__ = ["PRECISION_KEY", "PRECISION_META", "InsertFormatQDQ", "QuantizeFormats",
           "activation_sites"]

PRECISION_META, PRECISION_KEY = "lowbit_precision", "lowbit.precision"
_QDQ_KINDS = ("int8", "int4", "dequant")
_KINDS = ("fp32", "fp16", "bcq", "codes", *_QDQ_KINDS)


def _site(tag: dict) -> tuple[str, str]:
    """(site name as FX names it, initializer stem) of a block."""
    (a, e, _, _), = tag["blocks"]
    if "rows" not in tag:
        return tag["linear"], tag["linear"]
    return f"{tag['linear']}[{a}:{e}]", f"{tag['linear']}.rows_{a}_{e}"


def _storage(tag: dict, space: SearchSpace, k: int, activations: bool):
    (_, _, code, bits), = tag["blocks"]
    try:
        st = storage(code, bits, space, k, activations=activations, act=tag.get("act", "fp"))
    except ConfigError as err:
        raise ConfigError(f"{_site(tag)[0]}: {err}") from None
    if st.kind not in _KINDS:
        raise ConfigError(f"{_site(tag)[0]}: storage {st.kind!r} has no ONNX form")
    return st


def _set_weight(model: ir.Model, node: ir.Node, layout: str, w: np.ndarray) -> None:
    """The weight of ``node`` <- ``w`` ([out, in]); a copy when other nodes read it too."""
    graph, src = model.graph, weight_source(node, 1)
    arr = np.ascontiguousarray(w if layout == "out_in" else w.T, np.float32)
    if len({u.node for u in src.value.uses()}) == 1:
        src.value.const_value = ir.Tensor(arr, name=src.value.name)
        return
    src.reader.replace_input_with(src.index, add_initializer(
        graph, f"{src.value.name}_own", arr, ir.DataType.FLOAT))


def _round_half(graph: ir.Graph, node: ir.Node, stem: str, done: dict) -> None:
    """Input 0 of ``node`` <- Cast(Cast(x, FLOAT16), FLOAT); one pair of Casts per x."""
    x = node.inputs[0]
    if x not in done:
        half = ir.node("Cast", [x], attributes={"to": ir.DataType.FLOAT16},
                       name=unique_name(graph, f"{stem}/input_fp16", nodes=True))
        back = ir.node("Cast", [half.outputs[0]], attributes={"to": ir.DataType.FLOAT},
                       name=unique_name(graph, f"{stem}/input_fp16_back", nodes=True))
        half.outputs[0].name = unique_name(graph, f"{stem}:input_fp16")
        back.outputs[0].name = unique_name(graph, f"{stem}:input_fp16_back")
        half.outputs[0].shape = back.outputs[0].shape = x.shape
        half.outputs[0].type = ir.TensorType(ir.DataType.FLOAT16)
        back.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        graph.insert_before(node, [half, back])
        done[x] = back.outputs[0]
    node.replace_input_with(0, done[x])


@dataclasses.dataclass(frozen=True)
class QuantizeFormats(Pass):
    """fp16 and bit-plane blocks; every block's storage recorded (module docstring).

    Args:
        space: the plan's ``SearchSpace`` (group, symmetric, BCQ iterations and offset).
        activations: the legacy switch: int8 per-row blocks of linears whose tag names no
            int8 input will also quantize their input (W8A8 kernel); those with input "int8"
            will either way.
    """

    in_place = True
    space: SearchSpace
    activations: bool = False
    progress: bool = True

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        todo = [(n, t) for n, t in planned_linears(model)
                if "storage" not in t and len(t["blocks"]) == 1]
        report, fitted, t0, halves = [], 0, time.perf_counter(), {}
        for node, tag in progress_bar(todo, desc="mixed precision: blocks", unit="block",
                                      enabled=self.progress):
            (a, e, code, bits), = tag["blocks"]
            site, stem = _site(tag)
            act = tag.get("act", "fp")
            if act == "fp16":
                _round_half(graph, node, stem, halves)
            ref = linear_ref(model, node, stem)
            st = _storage(tag, self.space, ref.in_features, self.activations)
            w8a8 = st.kernel == "linear_u8s8"
            tag.update(storage=st.kind, activations=w8a8)
            group = None if act == "int8" else fitted_space(self.space, ref.in_features).group
            report.append({"linear": tag["linear"], "rows": list(tag.get("rows", (a, e))),
                           "code": code, "bits": bits, "storage": st.kind, "kernel": st.kernel,
                           "group": group, "act": "int8" if w8a8 else act})
            w = torch.from_numpy(weight_out_in(model, ref).copy())
            if st.kind == "fp16":
                q = dequantized(w, Candidate("fp", 16), self.space, site).numpy()
                _set_weight(model, node, ref.weight_layout, q)
            elif st.kind in ("bcq", "codes"):
                fit = bit_planes(w, st, bits, site)
                out = view_of(model).linear_out(ref)
                replace_with_bcq(model, BCQSite(tag["role"], ref, out,
                                        fit, relative_error(w, fit.dequantize()), float("nan")))
                node = next(n for n in bcq_nodes(graph) if n.name == f"{stem}.bcq")
                fitted += 1
            node.metadata_props[PLAN_KEY] = json.dumps(tag)
        if fitted and BCQ_DOMAIN not in model.opset_imports:
            fn = bcq_function(int(model.opset_imports.get("", 0)))
            model.functions[fn.identifier()] = fn
            model.opset_imports[BCQ_DOMAIN] = 1
        say(f"mixed precision: {len(todo)} blocks, {fitted} fitted as bit planes, "
            f"{time.perf_counter() - t0:.1f} s", enabled=self.progress and fitted > 0)
        if report:
            model.meta.setdefault(PRECISION_META, []).extend(report)
            model.metadata_props[PRECISION_KEY] = json.dumps(model.meta[PRECISION_META])
        return PassResult(model, any(r["storage"] != "fp32" or r["act"] != "fp"
                                     for r in report))


def activation_sites(model: ir.Model) -> list[Site]:
    """The static u8 inputs of the int8 blocks recorded with ``activations`` (W8A8: input
    "int8", or the legacy switch) and not yet
    quantized: one site per input tensor (q, k, v and the blocks of a split linear share it),
    named ``<linear>:input`` (``<linear>[a:b]:input``) after its first reader, as in FX."""
    sites: dict[ir.Value, Site] = {}
    for node, tag in planned_linears(model):
        if tag.get("storage") != "int8" or not tag.get("activations") or tag.get("qdq"):
            continue
        x = node.inputs[0]
        if is_op(producer(x), "DequantizeLinear"):
            continue
        if x not in sites:
            sites[x] = Site(f"{_site(tag)[0]}:input", W8A8.activation, x, readers=[])
        sites[x].readers.append((node, 0))
    return list(sites.values())


@dataclasses.dataclass(frozen=True)
class InsertFormatQDQ(Pass):
    """Weight DequantizeLinear of the int8 / int4 / dequant blocks, input Q/DQ of the int8
    blocks with activations (``activation_qparams``: ``{site: (scale, zero point)}`` of
    ``activation_sites``, as ``calibrate`` returns them)."""

    in_place = True
    space: SearchSpace
    activation_qparams: Mapping = dataclasses.field(default_factory=dict)

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        todo = [(n, t) for n, t in planned_linears(model)
                if t.get("storage") in _QDQ_KINDS and not t.get("qdq")]
        if not todo:
            return PassResult(model, False)
        number(graph)
        acts = activation_sites(model)
        if missing := [s.name for s in acts if s.name not in self.activation_qparams]:
            raise CalibrationError(f"{len(missing)} int8 input(s) have no calibrated range, e.g. "
                              f"{missing[0]!r}: pass calibration batches")
        rw = QDQRewriter(graph, self.activation_qparams)
        for node, tag in todo:
            site, stem = _site(tag)
            ref = linear_ref(model, node, stem)
            st = _storage(tag, self.space, ref.in_features, tag.get("activations", False))
            src = weight_source(node, 1)
            rw.weight(Site(f"{site}.weight", st.spec, src.value, source=src,
                           out_in=ref.weight_layout == "out_in"))
            tag["qdq"] = True
            node.metadata_props[PLAN_KEY] = json.dumps(tag)
        for s in acts:
            rw.activation(s)
        fold_weight_transposes(graph)
        pack_int4_weights(graph)
        graph.sort()
        return PassResult(model, True)
