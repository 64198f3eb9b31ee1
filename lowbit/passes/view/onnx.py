"""OnnxView: ``GraphView`` over an onnx_ir Graph (``lowbit.load_onnx``).

Nodes and values are onnx_ir's own. Recognisers, in ONNX ops (helpers of
``lowbit.passes.view.onnx_graph``, ``onnx_match`` and ``onnx_names``):

* linear   ``MatMul(x, W)`` (+ ``Add(., b)`` with a 1-D initializer b of width N: the linear's
  output is then the Add's) and ``Gemm(x, W, b)`` (transA=0); W an initializer read directly,
  through Transpose / Cast, or through a DequantizeLinear (already quantized).
  ``weight_layout`` is "in_out" for a [K, N] initializer (a plain MatMul, HF Conv1D's Gemm)
  and "out_in" for [N, K] (Gemm transB=1, or a Transpose on the way). A MatMul whose weight
  operand is *computed* from an initializer, or a Gemm with transA=1, is ``Refused``.
* norm     ``LayerNormalization``, ``RMSNormalization`` / ``SimplifiedLayerNormalization``, or
  the decomposed forms of ``match.match_norm`` (TorchScript LayerNorm below opset 17, HF RMSNorm).
* attention a fused ``Attention`` (opset 23; core_kind "sdpa") or
  ``com.microsoft.MultiHeadAttention`` ("mha").
* embedding ``Gather(table, idx)`` on axis 0 of a 2-D initializer.

Head size: the last dim of q, or (shapes unknown, as in TorchScript files) the fused op's
``q_num_heads``, or the last entry of the reshape that split the heads. Names:
``names.owner_name``; names not read off the initializer itself (dynamo's folded ``val_N``,
TorchScript's ``onnx::MatMul_N``) are logged with their source when spotting ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from lowbit.passes.patterns import EmbeddingRef, LinearRef, NormRef
from lowbit.passes.view import onnx_channels
from lowbit.passes.view.base import Fused, GraphView, Refused
from lowbit.passes.view.onnx_graph import (
    ancestors,
    back,
    bias_add,
    const_array,
    consumers,
    data_input,
    data_users,
    descendants,
    index_kind,
    index_root,
    is_op,
    is_parameter,
    is_scalar_scale,
    is_split,
    is_transparent,
    linear_output,
    number,
    order,
    param_of,
    producer,
    shape_of,
    split_source,
    weight_source,
)
from lowbit.passes.view.onnx_match import act_kind, is_residual_add, match_norm, rope_source
from lowbit.passes.view.onnx_names import owner_name

__all__ = ["OnnxView", "linear_weight"]

log = logging.getLogger("lowbit.passes.onnx")

_CANON = {"MatMul": "matmul", "Softmax": "softmax", "Add": "add", "Sub": "sub", "Mul": "mul",
          "Div": "div", "Where": "where", "Reshape": "reshape"}
_THROUGH = ("Cast", "Identity", "Transpose", "DequantizeLinear")  # initializer -> its reader


class OnnxView(GraphView):
    """``GraphView`` over an onnx_ir Graph (module docstring). Numbers the graph's nodes
    (``onnx_graph.number``) when made."""

    ir = "onnx"

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self._claimed: set = set()        # initializers read by recognised ops
        self._outs: dict = {}             # MatMul / Gemm -> the linear's output value
        self._derived: list = []          # (name, where it came from)
        number(graph)

    def _name(self, value: ir.Value | None, node: ir.Node) -> str:
        shared = value is not None and len({u.node for u in value.uses()}) > 1
        name, how = owner_name(value, node, shared=shared)
        if how != "initializer name":
            self._derived.append((name, how))
        return name

    def finish(self):
        if self._derived:
            hows = sorted({how for _, how in self._derived})
            log.info("%d name(s) derived from %s (initializers carry no torch names), e.g. %s",
                     len(self._derived), " / ".join(hows), self._derived[0][0])

    # ---- navigation --------------------------------------------------------------------------
    def nodes(self):
        return iter(self.graph)

    def order(self, node):
        return -1 if node is None else order(node)

    def name(self, node):
        return node.name

    def op(self, node):
        return _CANON[node.op_type] if is_op(node, *_CANON) else None

    def producer(self, value):
        return producer(value)

    def out(self, node):
        return node.outputs[0]

    def inputs(self, node):
        return [v for v in node.inputs if v is not None]

    def users(self, value):
        return data_users(value)

    def consumers(self, value):
        return consumers(value)

    def descendants(self, value):
        return descendants(value)

    def ancestors(self, value, floor, stop):
        return ancestors(value, self.order(producer(floor)), stop)

    def back(self, value, *, scales=False):
        return back(value, scales=scales)

    def is_transparent(self, node):
        return is_transparent(node)

    def is_scalar_scale(self, node):
        return is_scalar_scale(node)

    def data_input(self, node):
        return data_input(node)

    def shape(self, value):
        return shape_of(value)

    def is_graph_output(self, value):
        return value.is_graph_output()

    # ---- recognisers -------------------------------------------------------------------------
    def linear(self, node):
        gemm = is_op(node, "Gemm")
        if not (gemm or is_op(node, "MatMul")):
            return None
        if gemm and node.attributes.get_int("transA", 0):
            return Refused("Gemm with transA=1: the activation is transposed; not treated as a "
                           "linear")
        src = weight_source(node, 1)
        if src is None:
            return None
        if src.refused or len(src.value.shape) != 2:
            return Refused(src.refused or f"weight {src.value.name!r} has rank "
                                          f"{len(src.value.shape)}, not 2")
        rows, cols = (int(d) for d in src.value.shape)
        out_in = src.transposed ^ bool(gemm and node.attributes.get_int("transB", 0))
        fan_in, fan_out = (cols, rows) if out_in else (rows, cols)
        bias, out = None, node
        if gemm and len(node.inputs) > 2:
            bias = param_of(node.inputs[2])
        elif not gemm and (found := bias_add(node, fan_out)) is not None:
            bias, out = found
        self._claimed.update(v for v in (src.value, bias) if v is not None)
        self._outs[node] = out.outputs[0]
        return LinearRef(node, self._name(src.value, node), src.value.name,
                         bias.name if bias is not None else None, fan_in, fan_out,
                         "out_in" if out_in else "in_out")

    def linear_input(self, ref):
        return ref.node.inputs[0]

    def linear_out(self, ref):
        out = self._outs.get(ref.node)
        return out if out is not None else linear_output(ref)

    def norm(self, node):
        rms = node.op_type in ("RMSNormalization", "SimplifiedLayerNormalization")
        if is_op(node, "LayerNormalization") or rms:
            ins = list(node.inputs) + [None] * 3
            w, b = param_of(ins[1]), (None if rms else param_of(ins[2]))
            dim = (int(w.shape[-1]) if w is not None and w.shape is not None
                   else _last_dim(ins[0]))
            ref = NormRef(node, self._name(w, node), "rmsnorm" if rms else "layernorm",
                          w.name if w else None, b.name if b else None, dim, (node,))
            x = ins[0]
        elif is_op(node, "Sqrt") and (m := match_norm(node)) is not None:
            w, b = m.weight, m.bias
            dim = int(w.shape[-1]) if w is not None else _last_dim(m.x)
            ref = NormRef(m.out, self._name(w, m.out), m.kind, w.name if w else None,
                          b.name if b else None, dim, tuple(sorted(m.nodes, key=order)),
                          m.offset)
            x = m.x
        else:
            return None
        self._claimed.update(v for v in (w, b) if v is not None)
        return ref, x

    def fused_attention(self, node):
        fused = is_op(node, "Attention") or (node.domain == "com.microsoft"
                                             and node.op_type == "MultiHeadAttention")
        if fused and len(node.inputs) >= 3 and all(node.inputs[:3]):
            kind = "sdpa" if node.domain in ("", "ai.onnx") else "mha"
            return Fused(kind, *node.inputs[:3], node.outputs[0])
        return None

    def embedding(self, node):
        if not is_op(node, "Gather") or node.attributes.get_int("axis", 0) != 0:
            return None
        src = weight_source(node, 0)
        if src is None or src.value is None or src.transposed or len(src.value.shape) != 2:
            return None
        self._claimed.add(src.value)
        rows, dim = (int(d) for d in src.value.shape)
        role = index_kind(node.inputs[1])
        return EmbeddingRef(node, self._name(src.value, node), src.value.name, role, rows, dim)

    def index_input(self, ref):
        return index_root(ref.node.inputs[1]).name or ""

    def split_source(self, node):
        return split_source(node) if is_split(node) else None

    def part_width(self, ref, split, part):
        if is_op(split, "Split"):
            sizes = const_array(split.inputs[1]) if len(split.inputs) > 1 else None
            if sizes is None and "split" in split.attributes:
                sizes = np.array(split.attributes["split"].as_ints())
            if sizes is not None and len(sizes) == len(split.outputs):
                return int(sizes[list(split.outputs).index(part)])
            return ref.out_features // len(split.outputs)
        a, b = shape_of(part), shape_of(split.inputs[0])
        if a is None or b is None or sorted(map(str, (d for d in a if isinstance(d, str)))) != \
                sorted(map(str, (d for d in b if isinstance(d, str)))):
            return None
        pa = int(np.prod([d for d in a if isinstance(d, int)]))
        pb = int(np.prod([d for d in b if isinstance(d, int)]))
        return pa * ref.out_features // pb if pb else None

    def head_dim(self, core, q, width, reshape):
        shape = shape_of(q)
        if shape and isinstance(shape[-1], int) and len(shape) == 4:
            return shape[-1]
        if is_op(core, "Attention") and "q_num_heads" in core.attributes and width:
            return width // core.attributes.get_int("q_num_heads")
        if reshape is not None:
            target = reshape.inputs[1]
            arr = const_array(target)
            if arr is None and is_op(producer(target), "Concat"):
                arr = const_array(producer(target).inputs[-1])
            if arr is not None and arr.size and int(arr.flatten()[-1]) > 0:
                return int(arr.flatten()[-1])
        return None

    def rope_source(self, value):
        return rope_source(producer(value))

    def is_residual_add(self, node):
        return is_residual_add(node)

    def act_kind(self, nodes):
        return act_kind(nodes)

    def unrecognised_params(self):
        out = []
        for value in self.graph.initializers.values():
            users = data_users(value)
            if users and value not in self._claimed and is_parameter(value):
                ops = ", ".join(sorted({u.op_type for u in users}))
                why = f"parameter {value.name} read by {ops}, which spotting does not recognise"
                out.append((value.name, why))
        return out

    # ---- parameters --------------------------------------------------------------------------
    def param(self, name):
        return const_array(self.graph.initializers[name])

    def set_param(self, name, array):
        value = self.graph.initializers[name]
        old = const_array(value)
        arr = np.ascontiguousarray(np.asarray(array, dtype=old.dtype).reshape(old.shape))
        value.const_value = ir.Tensor(arr, name=name)

    def param_of(self, value):
        v = param_of(value)
        return v.name if v is not None else None

    def param_readers(self, name):
        return list(dict.fromkeys(_readers(self.graph.initializers[name])))

    def aliases(self, name):
        return [name]

    def tied_params(self, name):
        """``name`` and the initializers equal to it or to its transpose: torch.onnx.export
        constant-folds ``Transpose(E)`` of a tied LM head into a second copy of the table."""
        ref = self.param(name)
        out = {name: False}
        for other, value in self.graph.initializers.items():
            if other == name or value.const_value is None or value.shape is None:
                continue
            shape = tuple(value.shape)
            if shape == ref.shape and np.array_equal(self.param(other), ref):
                out[other] = False
            elif ref.ndim == 2 and shape == ref.shape[::-1] \
                    and np.array_equal(self.param(other), ref.T):
                out[other] = True
        return out

    # ---- small rewrites ----------------------------------------------------------------------
    def replace_uses(self, old, new, readers: Iterable | None = None):
        if readers is None:
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            return
        for u in readers:
            for i, v in enumerate(u.inputs):
                if v is old:
                    u.replace_input_with(i, new)

    def remove(self, node):
        self.graph.remove(node, safe=True)

    # ---- channel scales ----------------------------------------------------------------------
    def describe(self, node):
        return f"{node.name} ({node.op_type})"

    def value_name(self, value):
        return value.name

    def is_fake_quant(self, node):
        return False

    def keeps_last_axis(self, node):
        if not is_op(node, *_KEEP_LAST):
            return None
        a, b = shape_of(node.inputs[0]), shape_of(node.outputs[0])
        ok = a and b and isinstance(a[-1], int) and a[-1] == b[-1]
        return node.inputs[0] if ok else None

    def linear_operands(self, node):
        w = linear_weight(node)
        return w if isinstance(w, str) else (node.inputs[0], w[0].name, w[1])

    def linear_at(self, node):
        mm = node if is_op(node, "MatMul", "Gemm") else None
        if is_op(node, "Add") and len(node.inputs) == 2:      # MatMul + bias Add
            mm = next((producer(v) for v in node.inputs if is_op(producer(v), "MatMul")), None)
        ref = self.linear(mm) if mm is not None else None
        if not isinstance(ref, LinearRef) or isinstance(linear_weight(mm), str) \
                or self.linear_out(ref) is not node.outputs[0]:
            return None
        if is_op(mm, "Gemm") and len(mm.inputs) > 2 and mm.inputs[2] is not None and (
                ref.bias is None or len(self.graph.initializers[ref.bias].shape) != 1):
            return None
        return ref

    def param_pinned(self, name):
        value = self.graph.initializers[name]
        return value.is_graph_input() or value.is_graph_output()

    # ---- channel families (the ONNX op vocabulary: ``onnx_channels``) ----------------------------
    channel_inputs = onnx_channels.channel_inputs
    order_free = onnx_channels.order_free
    linear_bias = onnx_channels.linear_bias
    is_graph_input = onnx_channels.is_graph_input


_KEEP_LAST = ("Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze")   # checked on shapes


def linear_weight(node: ir.Node) -> tuple[ir.Value, str] | str:
    """(weight initializer, layout "out_in" | "in_out") of a MatMul / Gemm, or why not."""
    if is_op(node, "Gemm") and node.attributes.get_int("transA", 0):
        return f"{node.name} is a Gemm with transA=1"
    src = weight_source(node, 1) if is_op(node, "MatMul", "Gemm") else None
    if src is None or src.value is None:
        return f"{node.name} ({node.op_type}) has no weight initializer"
    if src.quantized:
        return f"{src.value.name} is already quantized: fold channel scales before InsertQDQ"
    if len(src.value.shape) != 2:
        return f"{src.value.name} has rank {len(src.value.shape)}, not 2"
    trans_b = is_op(node, "Gemm") and bool(node.attributes.get_int("transB", 0))
    return src.value, "out_in" if src.transposed ^ trans_b else "in_out"


def _readers(value: ir.Value) -> list[ir.Node]:
    out = []
    for u in data_users(value):
        out.extend(_readers(u.outputs[0]) if is_op(u, *_THROUGH) else [u])
    return out


def _last_dim(value: ir.Value | None) -> int:
    shape = shape_of(value)
    return shape[-1] if shape and isinstance(shape[-1], int) else 0
