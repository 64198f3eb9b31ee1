"""A (legalized) FX GraphModule -> Relax IRModule, weights kept as parameters.

The graph is re-exported with torch.export on its stored example inputs (static shapes) and
imported with ``relax.frontend.torch.from_exported_program`` plus converters for the ops the
stock importer does not know:

    lowbit::linear_u8s8[_q|_peg], linear_w4a16   -> call_tir of the integer kernel (kernels/),
                                                    rows flattened to [M, K] around it
    lowbit::bcq_linear                          ->  the same, BCQ operands repacked for the
                                                    bit-plane kernel (lowering/bcq.py)
    lowbit::tiered_embedding, tiered_linear     ->  the per-word gather kernel, one BCQ kernel
                                                    per tier for the tied head
                                                    (lowering/word_bits.py)
    quantized_decomposed q/dq left in the graph ->  the same math in Relax ops (float
                                                    fake-quant: ``clip(round(x * (1/s)) + z)``,
                                                    ``(q - z) * s``), so nothing is refused

Every buffer of the graph becomes a parameter first (the importer binds buffers as constants,
which would embed the weights in the compiled library and let FoldConstant fold int4 weights
back to fp32). Parameters are detached from the module: ``ImportedModel.params`` lists them in
the order the Relax ``main`` takes them, after the user inputs.
"""

from __future__ import annotations

import math

import torch
import torch.ao.quantization.fx._decomposed
from torch import fx
from tvm import relax

from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.frontends import ImportedModel
from lowbit.backends.tvm.lowering import ops  # noqa: F401  (registers the lowbit:: ops)
from lowbit.backends.tvm.lowering.bcq import emit_bcq_linear
from lowbit.backends.tvm.lowering.elementwise import emit_power
from lowbit.backends.tvm.lowering.word_bits import (
    emit_tiered_embedding,
    emit_tiered_linear,
    tiers_of,
)
from lowbit.capture import output_names
from lowbit.errors import CompileError
from lowbit.warning_filters import quiet

__all__ = ["CompileError", "ImportedModel", "import_graph"]

qd = torch.ops.quantized_decomposed
UNSUPPORTED = {  # op name -> why
    "choose_qparams_per_token.default": "dynamic per-token quantization (W8A8_DYNAMIC)",
    "choose_qparams_per_token_asymmetric.default": "dynamic per-token quantization",
    "choose_qparams.tensor": "dynamic per-tensor quantization",
    "choose_qparams_symmetric.tensor": "dynamic per-tensor quantization",
}


def _dtype(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _static_shape(x: relax.Expr, what: str) -> list[int]:
    try:
        return [int(d) for d in x.ty.shape.values]
    except (TypeError, AttributeError) as e:
        raise CompileError(f"{what}: needs a static input shape, got {x.ty}") from e


def _kernel(imp, kind: str, key: tuple, make) -> relax.GlobalVar:
    cache = imp.__dict__.setdefault("_lowbit_kernels", {})
    name = f"lowbit_{kind}_" + "_".join(str(k) for k in key)
    if name not in cache:
        cache[name] = imp.block_builder.add_func(make(), name)
    return cache[name]


def _rows(imp, node, x, n: int, kind: str, key_rest: tuple, make, args,
          out_dtype: str = "float32") -> relax.Var:
    bb = imp.block_builder
    shape = _static_shape(x, f"{kind} ({node.name})")
    k, m = shape[-1], math.prod(shape[:-1])
    gv = _kernel(imp, kind, (m, n, k, *key_rest), lambda: make(m, n, k))
    x2 = bb.emit(relax.op.reshape(x, (m, k)))
    y = bb.emit(relax.call_tir(gv, [x2, *args], relax.TensorType((m, n), out_dtype)))
    return bb.emit(relax.op.reshape(y, (*shape[:-1], n)))


def _linear_u8s8(node: fx.Node, imp) -> relax.Var:
    x, w, corr, scale, bias = (imp.env[a] for a in node.args)
    n = _static_shape(corr, "linear_u8s8 corr")[0]
    return _rows(imp, node, x, n, "linear_u8s8", (), kernels.linear_u8s8, [w, corr, scale, bias])


def _linear_u8s8_q(node: fx.Node, imp) -> relax.Var:
    x, w, corr, scale, bias, oq = (imp.env[a] for a in node.args[:6])
    act, qmin, qmax = node.args[6:9]
    n = _static_shape(corr, "linear_u8s8_q corr")[0]
    return _rows(imp, node, x, n, "linear_u8s8_q", (act, qmin, qmax),
                 lambda m, n_, k: kernels.linear_u8s8_q(m, n_, k, act, qmin, qmax),
                 [w, corr, scale, bias, oq], out_dtype="uint8")


def _linear_u8s8_peg(node: fx.Node, imp) -> relax.Var:
    x, w, corr, scale, bias = (imp.env[a] for a in node.args)
    groups, n = _static_shape(corr, "linear_u8s8_peg corr")
    return _rows(imp, node, x, n, "linear_u8s8_peg", (groups,),
                 lambda m, n_, k: kernels.linear_u8s8_peg(m, n_, k, groups), [w, corr, scale, bias])


def _linear_w4a16(node: fx.Node, imp) -> relax.Var:
    x, w, scale, bias = (imp.env[a] for a in node.args)
    k2, n = _static_shape(w, "linear_w4a16 weight")
    group = 2 * k2 // _static_shape(scale, "linear_w4a16 scale")[0]
    return _rows(imp, node, x, n, "linear_w4a16", (group,),
                 lambda m, n_, k: kernels.linear_w4a16(m, n_, k, group), [w, scale, bias])


def _bcq_linear(node: fx.Node, imp) -> relax.Var:
    """``lowbit::bcq_linear`` -> the BCQ kernel, its operands repacked by Relax ops on the
    parameters (lowering/bcq.py; lifted to ``main_transform_params``)."""
    x, planes, alpha, offset, bias = (None if a is None else imp.env[a] for a in node.args)
    return emit_bcq_linear(imp.block_builder, x, planes, alpha, offset, bias,
                           imp.__dict__.setdefault("_lowbit_kernels", {}))


def _tiered(node: fx.Node, imp):
    """(first operand, pos, non-empty tiers, D, kernel cache, what) of a tiered op."""
    first, pos = imp.env[node.args[0]], imp.env[node.args[1]]
    planes, alpha, offset = ([imp.env[a] for a in arg] for arg in node.args[2:5])
    what = f"{node.target.__name__.split('.')[0]} ({node.name})"
    tiers, d = tiers_of(pos, planes, alpha, offset, what)
    return first, pos, tiers, d, imp.__dict__.setdefault("_lowbit_kernels", {}), what


def _tiered_embedding(node: fx.Node, imp) -> relax.Var:
    """``lowbit::tiered_embedding`` -> the per-word gather kernel (lowering/word_bits.py)."""
    ids, pos, tiers, d, cache, what = _tiered(node, imp)
    return emit_tiered_embedding(imp.block_builder, ids, pos, tiers, d, cache, what)


def _tiered_linear(node: fx.Node, imp) -> relax.Var:
    """``lowbit::tiered_linear`` -> one BCQ kernel per tier, concatenated and gathered into
    vocabulary order (lowering/word_bits.py)."""
    x, pos, tiers, d, cache, what = _tiered(node, imp)
    bias = node.args[5] if len(node.args) > 5 else node.kwargs.get("bias")
    return emit_tiered_linear(imp.block_builder, x, pos, tiers, d,
                              None if bias is None else imp.env[bias], cache, what)


def _f32(v: float) -> relax.Constant:
    return relax.const(v, "float32")


def _quantize_per_tensor(node: fx.Node, imp) -> relax.Var:
    x = imp.env[node.args[0]]
    scale, zp, qmin, qmax, dtype = node.args[1:6]
    y = relax.op.add(relax.op.round(relax.op.multiply(x, _f32(1.0 / scale))), _f32(float(zp)))
    y = relax.op.minimum(relax.op.maximum(y, _f32(float(qmin))), _f32(float(qmax)))
    return imp.block_builder.emit(relax.op.astype(y, _dtype(dtype)))


def _dequantize_per_tensor(node: fx.Node, imp) -> relax.Var:
    q = imp.env[node.args[0]]
    scale, zp = node.args[1:3]
    y = relax.op.subtract(relax.op.astype(q, "float32"), _f32(float(zp)))
    return imp.block_builder.emit(relax.op.multiply(y, _f32(float(scale))))


def _per_row(v: relax.Expr, ndim: int, axis: int, dtype: str) -> relax.Expr:
    n = _static_shape(v, "per-channel qparams")
    shape = [1] * ndim
    shape[axis] = math.prod(n)
    return relax.op.reshape(relax.op.astype(v, dtype), shape)


def _quantize_per_channel(node: fx.Node, imp) -> relax.Var:
    """quantized_decomposed's arithmetic: ``round(x * (1 / s)) + z`` with ``1 / s`` an fp32
    tensor op (PEG activations: per channel along the last axis)."""
    x, s, z = (imp.env[a] for a in node.args[:3])
    axis, qmin, qmax, dtype = node.args[3:7]
    ndim = len(_static_shape(x, "quantize_per_channel"))
    inv = relax.op.divide(_f32(1.0), _per_row(s, ndim, axis, "float32"))
    y = relax.op.add(relax.op.round(relax.op.multiply(x, inv)), _per_row(z, ndim, axis, "float32"))
    y = relax.op.minimum(relax.op.maximum(y, _f32(float(qmin))), _f32(float(qmax)))
    return imp.block_builder.emit(relax.op.astype(y, _dtype(dtype)))


def _dequantize_per_channel(node: fx.Node, imp) -> relax.Var:
    q, s, z = (imp.env[a] for a in node.args[:3])
    axis = node.args[3]
    ndim = len(_static_shape(q, "dequantize_per_channel"))
    diff = relax.op.subtract(relax.op.astype(q, "int32"), _per_row(z, ndim, axis, "int32"))
    y = relax.op.multiply(relax.op.astype(diff, "float32"), _per_row(s, ndim, axis, "float32"))
    return imp.block_builder.emit(y)


def _dequantize_per_channel_group(node: fx.Node, imp) -> relax.Var:
    q, s, z = (imp.env[a] for a in node.args[:3])
    group = node.args[6] if len(node.args) > 6 else node.kwargs.get("group_size", 128)
    n, k = _static_shape(q, "dequantize_per_channel_group")
    rows = n * k // group
    qg = relax.op.reshape(relax.op.astype(q, "int32"), (rows, group))
    zg = relax.op.reshape(relax.op.astype(z, "int32"), (rows, 1))
    sg = relax.op.reshape(relax.op.astype(s, "float32"), (rows, 1))
    y = relax.op.multiply(relax.op.astype(relax.op.subtract(qg, zg), "float32"), sg)
    return imp.block_builder.emit(relax.op.reshape(y, (n, k)))


def _cumsum(node: fx.Node, imp) -> relax.Var:
    """torch semantics: integer and bool inputs sum in int64 (TVM 0.27's importer keeps a bool
    input's dtype, which LegalizeOps then cannot lower; HF causal masks cumsum a bool mask)."""
    x = imp.env[node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
    dtype = node.kwargs.get("dtype")
    src = str(x.ty.dtype)
    if dtype is not None:
        out = _dtype(dtype)
    elif src == "bool" or src.startswith(("int", "uint")):
        out = "int64"
    else:
        out = src
    if src != out:
        x = imp.block_builder.emit(relax.op.astype(x, out))
    return imp.block_builder.emit(relax.op.cumsum(x, axis=dim, dtype=out))


def _pow_scalar(node: fx.Node, imp) -> relax.Var:
    """``x ** e`` with a number ``e``: small integer powers as multiplies (lowering/elementwise.py:
    TVM's CUDA ``power`` is NaN for a negative base)."""
    x, e = imp.env[node.args[0]], node.args[1]
    y = emit_power(imp.block_builder, x, e)
    return y if y is not None else imp.block_builder.emit(
        relax.op.power(x, relax.const(float(e), str(x.ty.dtype))))


CONVERTERS = {
    "cumsum.default": _cumsum,
    "pow.Tensor_Scalar": _pow_scalar,
    "linear_u8s8.default": _linear_u8s8,
    "linear_u8s8_q.default": _linear_u8s8_q,
    "linear_u8s8_peg.default": _linear_u8s8_peg,
    "quantize_per_channel.default": _quantize_per_channel,
    "linear_w4a16.default": _linear_w4a16,
    "bcq_linear.default": _bcq_linear,
    "tiered_embedding.default": _tiered_embedding,
    "tiered_linear.default": _tiered_linear,
    "quantize_per_tensor.default": _quantize_per_tensor,
    "dequantize_per_tensor.default": _dequantize_per_tensor,
    "dequantize_per_channel.default": _dequantize_per_channel,
    "dequantize_per_channel_group.default": _dequantize_per_channel_group,
}


def _buffers_to_parameters(gm: torch.nn.Module) -> None:
    for name, b in list(gm.named_buffers()):
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        delattr(owner, attr)
        owner.register_parameter(attr, torch.nn.Parameter(b, requires_grad=False))


def _check_supported(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", "")
            if name in UNSUPPORTED and "quantized_decomposed" in str(node.target):
                raise CompileError(f"the TVM backend does not lower {UNSUPPORTED[name]} yet "
                                   f"(node {node.name}: {node.target}); use a static recipe "
                                   f"(W8A8, W8A8_FULL, W4A16_G128) or compile the float graph")


def _views_as_reshapes(gm: fx.GraphModule) -> None:
    """``aten.view`` -> ``aten.reshape`` (the same values; a copy where no view exists).

    A graph captured at one shape keeps the views that were possible there: GPT-2's
    ``attn.reshape(b, s, -1).contiguous()`` then ``x.view(-1, d)`` in Conv1D is captured as
    view over a transposed tensor, which at batch > 1 has no view, so re-exporting at the
    compile shape failed ("Cannot view a tensor with shape [2, 8, 32] and strides (32, 64,
    1)"). The captured graphs are functional, so no aliasing is lost."""
    changed = False
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.view.default):
        node.target = torch.ops.aten.reshape.default
        changed = True
    if changed:
        gm.recompile()


def import_graph(gm: fx.GraphModule, example: tuple[tuple, dict]) -> ImportedModel:
    """Export ``gm`` on ``example`` (args, kwargs) and import it into Relax (see module doc)."""
    from tvm.relax.frontend.torch import from_exported_program

    _check_supported(gm)
    args, kwargs = example
    _buffers_to_parameters(gm)
    _views_as_reshapes(gm)
    try:
        ep = torch.export.export(gm, tuple(args), dict(kwargs), strict=False)
    except Exception as e:  # torch raises many kinds
        raise CompileError(f"torch.export could not re-export the graph for TVM: "
                           f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs
                   if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    try:
        with quiet("torch-leafspec-deepcopy"):    # its decompositions copy the program
            mod = from_exported_program(ep, keep_params_as_input=True,
                                        custom_convert_map=CONVERTERS)
    except CompileError:    # a lowbit converter's own (names the node)
        raise
    except Exception as e:  # the importer (and the decompositions it runs) raise many kinds
        msg = str(e).strip().splitlines()
        raise CompileError(f"the Relax importer refused the graph: {type(e).__name__}: "
                           f"{msg[0] if msg else ''}") from e
    mod, params = relax.frontend.detach_params(mod)
    out_spec = getattr(gm, "_out_spec", None) or ep.call_spec.out_spec
    return ImportedModel(mod, list(params.get("main", [])), user_inputs,
                         output_names(out_spec), (tuple(args), dict(kwargs)))
