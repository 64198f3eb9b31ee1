"""A QDQ ONNX model -> Relax IRModule with lowbit's integer kernels, weights kept as parameters.

    read     ModelProto | .onnx path | onnx_ir.Model (``lowbit.load_onnx``) -> ModelProto;
             INT4 / UINT4 initializers widened to INT8 / UINT8 (same values: TVM reads no
             4-bit data), int64 and one-element initializers turned into Constant nodes
             (shapes, indices, per-tensor qparams: the importer must see them as constants,
             e.g. an Expand whose shape is a parameter gets an unknown shape)
    fix      a model with symbolic input dimensions (``batch``, ``seq``: an export with dynamic
             shapes) gets the example's sizes, and the shape arithmetic written for them
             (Shape -> Gather -> Concat -> Reshape) is folded to constants (onnxscript's
             constant folding, which keeps every Q/DQ node); TVM's importer cannot infer a
             Reshape whose target shape is computed at run time
    import   ``relax.frontend.onnx.from_onnx(keep_params_in_input=True)`` with static input
             shapes (the model's, or those of ``example_inputs``); ``lowbit.BCQLinear``
             nodes become the BCQ bit-plane kernel (lowering/bcq.py),
             ``lowbit.TieredEmbedding`` the per-word gather kernel and ``lowbit.TieredLinear``
             one BCQ kernel per tier (lowering/word_bits.py)
    lower    LowerQDQMatMul (onnx_qdq.py): W8A8 and PEG QDQ MatMuls -> int8 kernels; every
             other q/dq stays Relax's float quantize/dequantize

Refused with ``CompileError``: blocked DequantizeLinear (int4 group-wise W4A16: TVM 0.27 does
not import it; compile the FX graph), and dynamic quantization (DynamicQuantizeLinear,
MatMulInteger, ...: compile the float model, or quantize statically).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import tvm
from onnx import helper, numpy_helper
from tvm import relax

from lowbit.backends.tvm.frontends import ImportedModel
from lowbit.backends.tvm.frontends.onnx_qdq import lower_qdq_matmul
from lowbit.backends.tvm.lowering.bcq import emit_bcq_linear
from lowbit.backends.tvm.lowering.elementwise import emit_power
from lowbit.backends.tvm.lowering.word_bits import (
    emit_tiered_embedding,
    emit_tiered_linear,
    tiers_of,
)
from lowbit.errors import CompileError, ConfigError
from lowbit.warning_filters import quiet

__all__ = ["import_onnx", "is_onnx"]

# lowbit-domain nodes whose kernel the lowering log names (the QDQ ones log themselves)
LOGGED_OPS = {"BCQLinear": "bcq_linear", "TieredEmbedding": "tiered_embedding",
              "TieredLinear": "tiered_linear"}
TIER_INPUTS = 3 * 4     # P, A, O per tier for the ONNX form's 4 tiers (passes/onnx/word_bits.py)
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
               "QLinearConv", "MatMulNBits", "DynamicQuantizeMatMul", "QLinearAdd"}


def is_onnx(x: Any) -> bool:
    """Whether ``compile`` should take ``x`` as an ONNX model (proto, path or onnx_ir)."""
    if isinstance(x, onnx.ModelProto):
        return True
    if isinstance(x, (str, os.PathLike)):
        return True  # a path: read_model says clearly when it is not ONNX
    return type(x).__module__.startswith("onnx_ir") and hasattr(x, "graph")


# ---- read --------------------------------------------------------------------------------------
def read_model(x: Any) -> onnx.ModelProto:
    """A fresh ModelProto (the caller's model is never modified)."""
    if isinstance(x, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(x)
        return proto
    if isinstance(x, (str, os.PathLike)):
        path = pathlib.Path(x)
        if not path.is_file():
            raise ConfigError(f"compile: {path}: no such file (expected an .onnx model)")
        try:
            return onnx.load(str(path))
        except Exception as e:  # protobuf DecodeError and friends: all mean "not ONNX"
            raise ConfigError(f"compile: {path} is not a readable ONNX model "
                              f"({type(e).__name__}: {e})") from e
    import onnx_ir as ir

    proto = ir.to_proto(x)
    base = next((v.const_value.base_dir for v in x.graph.initializers.values()
                 if isinstance(v.const_value, ir.ExternalTensor)), None)
    if base is not None:
        onnx.external_data_helper.load_external_data_for_model(proto, str(base))
    return proto


def _check_ops(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and any(
                a.name == "block_size" and a.i != 0 for a in node.attribute):
            raise CompileError(
                f"node {node.name or node.output[0]}: blocked (group-wise) DequantizeLinear, "
                f"as in int4 W4A16 exports, does not import into TVM 0.27's ONNX frontend; "
                f"compile the quantized FX graph instead (lowbit.compile(qgm)), which lowers "
                f"it to the int4 kernel")
        if node.op_type in DYNAMIC_OPS:
            raise CompileError(
                f"node {node.name or node.output[0]}: {node.op_type} (dynamic or operator-form "
                f"quantization) is not lowered by the TVM backend; compile the float model, "
                f"or quantize statically into QDQ form (lowbit.export_onnx, or onnxruntime's "
                f"quantize_static with QuantFormat.QDQ)")


def _prepare_initializers(graph: onnx.GraphProto) -> None:
    """Widen 4-bit initializers to 8 bits; make int64 and one-element ones Constant nodes."""
    keep, consts = [], []
    widen = {onnx.TensorProto.INT4: np.int8, onnx.TensorProto.UINT4: np.uint8}
    for t in graph.initializer:
        arr = numpy_helper.to_array(t)
        if t.data_type in widen:
            t = numpy_helper.from_array(arr.astype(widen[t.data_type]), t.name)
        if arr.dtype == np.int64 or arr.size <= 1:
            consts.append(helper.make_node("Constant", [], [t.name], value=t))
        else:
            keep.append(t)
    names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names]  # old models list weights too
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(keep)
    graph.input.extend(inputs)
    nodes = consts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _shapes(graph: onnx.GraphProto, example_inputs: Any) -> tuple[dict, dict]:
    """Static input shapes (name -> list) and the example as {name: array}."""
    specs = [(i.name, [d.dim_value if d.HasField("dim_value") else None
                       for d in i.type.tensor_type.shape.dim]) for i in graph.input]
    names = [n for n, _ in specs]
    if example_inputs is None:
        dynamic = [f"{n}{['?' if d is None else d for d in s]}" for n, s in specs
                   if any(d is None or d <= 0 for d in s)]
        if dynamic:
            raise ConfigError(f"the ONNX model has dynamic input shapes ({', '.join(dynamic)}) "
                              f"and TVM compiles static ones: pass example_inputs= (a dict "
                              f"name -> array, or a tuple in input order {names})")
        return {n: s for n, s in specs}, {}
    if isinstance(example_inputs, Mapping):
        ex = dict(example_inputs)
    elif isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        if len(example_inputs) != len(names):
            raise ConfigError(f"example_inputs: {len(example_inputs)} value(s) for the model's "
                              f"{len(names)} input(s) {names}")
        ex = dict(zip(names, example_inputs))
    else:
        raise ConfigError(f"example_inputs for an ONNX model must be a dict name -> array or a "
                          f"tuple in input order, got {type(example_inputs).__name__}")
    unknown, missing = set(ex) - set(names), [n for n in names if n not in ex]
    if unknown or missing:
        raise ConfigError(f"example_inputs do not match the model's inputs {names}: missing "
                          f"{missing}, unexpected {sorted(unknown)}")
    return {n: list(np.shape(ex[n])) for n in names}, ex


def _symbolic(graph: onnx.GraphProto) -> bool:
    return any(not d.HasField("dim_value") or d.dim_value <= 0
               for i in graph.input for d in i.type.tensor_type.shape.dim)


def _fix_shapes(proto: onnx.ModelProto, shapes: dict[str, list]) -> onnx.ModelProto:
    """``proto`` with its inputs fixed to ``shapes`` and its shape arithmetic folded (see the
    module docstring: "fix"); a model without symbolic input dimensions is returned as is."""
    if not _symbolic(proto.graph):
        return proto
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants

    for value in proto.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes.get(value.name, [])):
            dim.Clear()
            dim.dim_value = int(size)
    del proto.graph.value_info[:]          # symbolic shapes of intermediates: inferred again
    model = ir.from_proto(proto)
    with quiet("onnxscript-fold-evaluation-failed"):   # for what stays dynamic
        fold_constants(model, onnx_shape_inference=True)
    RemoveUnusedNodesPass()(model)
    return ir.to_proto(model)


def _zeros(v: relax.Expr, params) -> bool:
    """Whether ``v`` is an initializer holding only zeros (the importer's ``params``)."""
    values = params[1]
    if isinstance(v, relax.Var) and v.name in values:
        arr = values[v.name][1]
        return not np.any(arr.numpy() if hasattr(arr, "numpy") else arr)
    return isinstance(v, tvm.ir.GenericConst) and not np.any(v.value.numpy())


def _scalar(v: relax.Expr, params) -> float | None:
    """The value of a one-element float initializer or constant, else None."""
    values = params[1]
    if isinstance(v, relax.Var) and v.name in values:
        arr = values[v.name][1]
    elif isinstance(v, tvm.ir.GenericConst):
        arr = v.value
    else:
        return None
    arr = np.asarray(arr.numpy() if hasattr(arr, "numpy") else arr)
    return float(arr.reshape(-1)[0]) if arr.size == 1 and arr.dtype.kind == "f" else None


def _pow(table) -> type:
    """``Pow`` with a constant exponent 1..4 or 0.5 as multiplies / sqrt (lowering/
    elementwise.py: TVM's CUDA ``power`` is NaN for a negative base); else TVM's converter."""
    class Op:
        @staticmethod
        def get_converter(opset):
            base = table()["Pow"].get_converter(opset)

            def convert(bb, inputs, attr, params):
                e = _scalar(inputs[1], params)
                y = None if e is None else emit_power(bb, inputs[0], e)
                return y if y is not None else base(bb, inputs, attr, params)
            return convert

    return Op


def _converter(convert) -> type:
    """A converter-table entry (what ``_get_convert_map`` lists) for ``convert``."""
    class Op:
        @staticmethod
        def get_converter(_opset):
            return convert

    return Op


def _tiered(inputs, attr, params, op_type: str):
    """(first input, pos, non-empty tiers, D, what) of a ``lowbit.Tiered*`` node (inputs:
    first, Pos, then P, A, O per tier, passes/onnx/word_bits.py); all-zero offsets dropped."""
    what = f"lowbit.{op_type} ({attr['tvm_custom']['name']})"
    ops = [inputs[i] for i in range(2 + TIER_INPUTS)]
    offsets = [None if _zeros(o, params) else o for o in ops[4::3]]
    tiers, d = tiers_of(ops[1], ops[2::3], ops[3::3], offsets, what)
    return ops[0], ops[1], tiers, d, what


@contextlib.contextmanager
def _lowbit_ops():
    """TVM 0.27's ``from_onnx`` takes no custom converters: while it runs, its converter table
    also maps ``lowbit.BCQLinear`` (X, Planes, Alpha, Offset, Bias) to the BCQ kernel,
    ``lowbit.TieredEmbedding`` (Ids, Pos, P0, A0, O0, .., O3) to the per-word gather kernel
    and ``lowbit.TieredLinear`` (X, Pos, P0, .., O3, Bias) to one BCQ kernel per tier; an
    all-zero Offset or Bias (the exports write them where the fit has none) is dropped, so
    no kernel streams it."""
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    table, kernels = fe._get_convert_map, {}

    def bcq_linear(bb, inputs, _attr, params):
        x, planes, alpha, offset, bias = (inputs[i] for i in range(5))
        offset = None if _zeros(offset, params) else offset
        return emit_bcq_linear(bb, x, planes, alpha, offset, bias, kernels)

    def tiered_embedding(bb, inputs, attr, params):
        ids, pos, tiers, d, what = _tiered(inputs, attr, params, "TieredEmbedding")
        return emit_tiered_embedding(bb, ids, pos, tiers, d, kernels, what)

    def tiered_linear(bb, inputs, attr, params):
        x, pos, tiers, d, what = _tiered(inputs, attr, params, "TieredLinear")
        bias = inputs[2 + TIER_INPUTS]
        bias = None if bias is None or _zeros(bias, params) else bias
        return emit_tiered_linear(bb, x, pos, tiers, d, bias, kernels, what)

    fe._get_convert_map = lambda: {**table(), "Pow": _pow(table),
                                   "BCQLinear": _converter(bcq_linear),
                                   "TieredEmbedding": _converter(tiered_embedding),
                                   "TieredLinear": _converter(tiered_linear)}
    try:
        yield
    finally:
        fe._get_convert_map = table


# ---- entry -------------------------------------------------------------------------------------
def import_onnx(model: Any, example_inputs: Any = None, *, int8: bool = True
                ) -> tuple[ImportedModel, list[tuple[str, str]]]:
    """Read, import and lower an ONNX model (module docstring); returns the imported model
    and the lowering log."""
    from tvm.relax.frontend.onnx import from_onnx

    proto = read_model(model)
    _check_ops(proto)
    _prepare_initializers(proto.graph)
    shape_dict, example = _shapes(proto.graph, example_inputs)
    proto = _fix_shapes(proto, shape_dict)
    input_names = list(shape_dict)
    try:
        with _lowbit_ops():
            mod = from_onnx(proto, shape_dict=shape_dict, keep_params_in_input=True,
                            sanitize_input_names=False)
    except CompileError:    # a lowbit converter's own (names the node)
        raise
    except Exception as e:  # the importer raises many kinds
        msg = str(e).strip().splitlines()
        raise CompileError(f"TVM's ONNX importer refused the model: {type(e).__name__}: "
                           f"{msg[-1] if msg else ''}") from e
    mod, params = relax.frontend.detach_params(mod)
    mod, values, log = lower_qdq_matmul(mod, list(params.get("main", [])), int8=int8)
    log += [(n.name or n.output[0], LOGGED_OPS[n.op_type]) for n in proto.graph.node
            if n.domain == "lowbit" and n.op_type in LOGGED_OPS]
    outputs = [o.name for o in proto.graph.output]
    return ImportedModel(mod, values, input_names, outputs, ((), example)), log
