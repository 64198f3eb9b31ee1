"""Transformer spotting on ONNX graphs: ``find_transformer(model) -> TransformerMap``.

The same algorithm, roles and naming rules as ``lowbit.passes.fx.spot``, in ONNX ops. Matched
by data flow, never by names (those only name what was found):

* linear   ``MatMul(x, W)`` (+ ``Add(., b)`` with a 1-D initializer b of width N) and
  ``Gemm(x, W, b)`` (transA=0); W an initializer read directly, through Transpose / Cast, or
  through a DequantizeLinear (already quantized). ``weight_layout`` is "in_out" for a [K, N]
  initializer (a plain MatMul, HF Conv1D's Gemm) and "out_in" for [N, K] (Gemm transB=1, or a
  Transpose on the way). A MatMul whose weight operand is *computed* from an initializer is not
  a linear; it is noted in ``unclassified`` with the reason.
* norm     ``LayerNormalization``, ``RMSNormalization`` / ``SimplifiedLayerNormalization``, or
  the decomposed forms of ``match.match_norm`` (TorchScript LayerNorm below opset 17, HF RMSNorm).
* core     ``Softmax`` with ``q @ k^T`` before it and ``@ v`` after it, both between activations
  (the exporters' SDPA decomposition, NaN guard included), or a fused ``Attention`` (opset 23;
  core_kind "sdpa") / ``com.microsoft.MultiHeadAttention`` ("mha").
* q/k/v, o, blocks, FFN, ends: exactly as on FX (see its docstring): traced back from the core
  through transparent ops, scalar scales, RoPE, norms and splits (Split / Slice / Gather);
  pre-LN or post-LN from where the norms sit; the FFN from ``down(act(gate(x)) * up(x))`` or
  ``down(act(up(x)))``; final norm and head after the last block.

Head counts come from the width of each projection over the head dimension (the last dim of
q, or the last entry of the reshape that splits heads when shapes are unknown, as in
TorchScript files). Names: ``graph_utils.owner_name``; names not read off the initializer
itself (dynamo's folded ``val_N``, TorchScript's ``onnx::MatMul_N``) are logged with their
source. ``unclassified`` lists every linear, norm or parameter without a role, and every core
or weight that was refused, with the reason.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from lowbit.errors import PatternError
from lowbit.passes.onnx.graph_utils import (
    ancestors,
    back,
    bias_add,
    const_array,
    consumers,
    data_input,
    data_users,
    descendants,
    is_op,
    is_scalar_scale,
    is_split,
    is_transparent,
    number,
    order,
    param_of,
    producer,
    shape_of,
    split_source,
    weight_source,
)
from lowbit.passes.onnx.match import act_kind, is_residual_add, match_norm, rope_source
from lowbit.passes.onnx.names import owner_name
from lowbit.passes.patterns import (
    AttentionMap,
    BlockMap,
    EmbeddingRef,
    FFNMap,
    LinearRef,
    NormRef,
    TransformerMap,
)

__all__ = ["find_transformer"]

log = logging.getLogger("lowbit.passes.onnx")


@dataclasses.dataclass
class _Ctx:
    graph: ir.Graph
    linears: dict = dataclasses.field(default_factory=dict)   # output node -> LinearRef
    by_node: dict = dataclasses.field(default_factory=dict)   # MatMul / Gemm -> LinearRef
    norm_out: dict = dataclasses.field(default_factory=dict)  # output node -> NormRef
    norm_in: dict = dataclasses.field(default_factory=dict)   # NormRef -> input value
    norm_of: dict = dataclasses.field(default_factory=dict)   # member node -> NormRef
    params: set = dataclasses.field(default_factory=set)      # initializers read by refs
    notes: list = dataclasses.field(default_factory=list)     # (name, reason)
    derived: list = dataclasses.field(default_factory=list)   # (name, where it came from)

    def name(self, value: ir.Value | None, node: ir.Node) -> str:
        shared = value is not None and len({u.node for u in value.uses()}) > 1
        name, how = owner_name(value, node, shared=shared)
        if how != "initializer name":
            self.derived.append((name, how))
        return name


@dataclasses.dataclass
class _Core:
    node: ir.Node
    kind: str
    q: ir.Value
    k: ir.Value
    v: ir.Value
    out: ir.Value


@dataclasses.dataclass
class _Trace:
    linear: LinearRef | None
    width: int | None = None
    rope: bool = False
    norms: tuple = ()
    reshape: ir.Node | None = None
    stop: object = None


def find_transformer(model: ir.Model | ir.Graph) -> TransformerMap:
    """Read the transformer structure of an ONNX model (``onnx_ir.Model``, see ``load_onnx``)."""
    graph = model.graph if isinstance(model, ir.Model) else model
    if not isinstance(graph, ir.Graph):
        raise PatternError(f"find_transformer() takes an onnx_ir.Model (lowbit.load_onnx), got "
                           f"{type(model).__name__}")
    number(graph)
    ctx = _Ctx(graph)
    for node in graph:
        if (ref := _linear_ref(ctx, node)) is not None:
            ctx.linears[ref[1]] = ctx.by_node[node] = ref[0]
    _scan_norms(ctx)
    embeddings = _embeddings(ctx)
    found = []
    for core in _cores(ctx):
        if (block := _block(ctx, len(found), core)) is not None:
            found.append(block)
    tm = TransformerMap(blocks=[b for b, _, _ in found], embeddings=embeddings, ir="onnx")
    if found:
        _ends(ctx, tm, found[-1][2], found[0][1])
    tm.unclassified = ctx.notes + _unclassified(ctx, tm)
    if ctx.derived:
        hows = sorted({how for _, how in ctx.derived})
        log.info("%d name(s) derived from %s (initializers carry no torch names), e.g. %s",
                 len(ctx.derived), " / ".join(hows), ctx.derived[0][0])
    return tm


# ---- recognisers ---------------------------------------------------------------------------
def _linear_ref(ctx: _Ctx, node: ir.Node) -> tuple[LinearRef, ir.Node] | None:
    gemm = is_op(node, "Gemm")
    if not (gemm or is_op(node, "MatMul")):
        return None
    if gemm and node.attributes.get_int("transA", 0):
        why = "Gemm with transA=1: the activation is transposed; not treated as a linear"
        ctx.notes.append((node.name, why))
        return None
    src = weight_source(node, 1)
    if src is None:
        return None
    if src.refused or len(src.value.shape) != 2:
        why = src.refused or f"weight {src.value.name!r} has rank {len(src.value.shape)}, not 2"
        ctx.notes.append((node.name, why))
        return None
    rows, cols = (int(d) for d in src.value.shape)
    out_in = src.transposed ^ bool(gemm and node.attributes.get_int("transB", 0))
    fan_in, fan_out = (cols, rows) if out_in else (rows, cols)
    bias, out = None, node
    if gemm and len(node.inputs) > 2:
        bias = param_of(node.inputs[2])
    elif not gemm and (found := bias_add(node, fan_out)) is not None:
        bias, out = found
    ctx.params.update(v for v in (src.value, bias) if v is not None)
    ref = LinearRef(node, ctx.name(src.value, node), src.value.name,
                    bias.name if bias is not None else None, fan_in, fan_out,
                    "out_in" if out_in else "in_out")
    return ref, out


def _add_norm(ctx: _Ctx, ref: NormRef, x: ir.Value, weight, bias) -> None:
    ctx.norm_out[ref.node] = ref
    ctx.norm_in[ref] = x
    ctx.params.update(v for v in (weight, bias) if v is not None)
    for n in ref.nodes:
        ctx.norm_of[n] = ref


def _scan_norms(ctx: _Ctx) -> None:
    for node in ctx.graph:
        rms = node.op_type in ("RMSNormalization", "SimplifiedLayerNormalization")
        if is_op(node, "LayerNormalization") or rms:
            ins = list(node.inputs) + [None] * 3
            w, b = param_of(ins[1]), (None if rms else param_of(ins[2]))
            dim = (int(w.shape[-1]) if w is not None and w.shape is not None
                   else _last_dim(ins[0]))
            ref = NormRef(node, ctx.name(w, node), "rmsnorm" if rms else "layernorm",
                          w.name if w else None, b.name if b else None, dim, (node,))
            _add_norm(ctx, ref, ins[0], w, b)
        elif is_op(node, "Sqrt") and (m := match_norm(node)) is not None:
            w = m.weight
            dim = int(w.shape[-1]) if w is not None else _last_dim(m.x)
            ref = NormRef(m.out, ctx.name(w, m.out), m.kind, w.name if w else None,
                          m.bias.name if m.bias else None, dim,
                          tuple(sorted(m.nodes, key=order)), m.offset)
            _add_norm(ctx, ref, m.x, w, m.bias)


def _last_dim(value: ir.Value | None) -> int:
    shape = shape_of(value)
    return shape[-1] if shape and isinstance(shape[-1], int) else 0


def _embeddings(ctx: _Ctx) -> list[EmbeddingRef]:
    found = []
    for node in ctx.graph:
        if not is_op(node, "Gather") or node.attributes.get_int("axis", 0) != 0:
            continue
        src = weight_source(node, 0)
        if src is None or src.value is None or src.transposed or len(src.value.shape) != 2:
            continue
        ctx.params.add(src.value)
        rows, dim = (int(d) for d in src.value.shape)
        role = _index_kind(node.inputs[1])
        found.append(EmbeddingRef(node, ctx.name(src.value, node), src.value.name, role, rows,
                                  dim))
    inputs = [e for e in found if e.role == "input"]
    vocab = max((e.num_embeddings for e in inputs), default=0)
    for e in inputs:
        source = _index_root(e.node.inputs[1]).name or ""
        e.role = ("embedding.word" if e.num_embeddings == vocab else
                  "embedding.position" if "position" in source else "embedding.token_type")
    return found


def _index_root(idx: ir.Value) -> ir.Value:
    """Back from an embedding index through moves, slices and ``+ c`` offsets."""
    while (p := producer(idx)) is not None and (
            is_transparent(p) or is_split(p) or is_op(p, "Slice") or (
            is_op(p, "Add", "Sub") and const_array(p.inputs[1]) is not None)):
        idx = p.inputs[0]
    return idx


def _index_kind(idx: ir.Value) -> str:
    root = _index_root(idx)
    if root.is_graph_input():
        return "input"
    node = root
    while is_op(p := producer(node), "Add", "Sub", "Mul", "Cast") or is_transparent(p):
        node = p.inputs[0]
    if is_op(producer(root), "Range") or is_op(producer(node), "CumSum"):
        return "embedding.position"
    arr = const_array(root)
    if arr is not None and arr.size > 1 and bool((arr != arr.flatten()[0]).any()):
        return "embedding.position"
    return "embedding.token_type"


# ---- attention -----------------------------------------------------------------------------
def _cores(ctx: _Ctx) -> list[_Core]:
    cores = []
    for node in ctx.graph:
        fused = is_op(node, "Attention") or (node.domain == "com.microsoft"
                                             and node.op_type == "MultiHeadAttention")
        if fused and len(node.inputs) >= 3 and all(node.inputs[:3]):
            kind = "sdpa" if node.domain in ("", "ai.onnx") else "mha"
            cores.append(_Core(node, kind, *node.inputs[:3], node.outputs[0]))
        elif is_op(node, "Softmax") and (mm := _softmax_matmuls(ctx, node)) is not None:
            cores.append(_Core(node, "softmax", *mm[0].inputs[:2], mm[1].inputs[1],
                               mm[1].outputs[0]))
    return cores


def _softmax_matmuls(ctx: _Ctx, softmax: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    scores = _scores_matmul(ctx, softmax.inputs[0], depth=6)
    pv = next((u for u in consumers(softmax.outputs[0]) if is_op(u, "MatMul")
               and u not in ctx.by_node and back(u.inputs[0]) is softmax.outputs[0]), None)
    return (scores, pv) if scores is not None and pv is not None else None


def _scores_matmul(ctx: _Ctx, value: ir.Value, depth: int) -> ir.Node | None:
    node = producer(back(value, scales=True))
    if is_op(node, "MatMul") and node not in ctx.by_node:
        return node
    if depth and is_op(node, "Add", "Sub", "Where"):
        for v in node.inputs:
            if v is not None and (m := _scores_matmul(ctx, v, depth - 1)):
                return m
    return None


def _trace_projection(ctx: _Ctx, value: ir.Value) -> _Trace:
    """Follow a core input back to its projection; note RoPE, norms, the split taken and the
    reshape that split the heads."""
    rope, norms, split, reshape = False, [], None, None
    while value is not None:
        p = producer(value)
        if p in ctx.linears:
            lin = ctx.linears[p]
            return _Trace(lin, _width(lin, split), rope, tuple(norms), reshape)
        if p in ctx.norm_out:
            norms.append(ctx.norm_out[p])
            value = ctx.norm_in[norms[-1]]
        elif (src := rope_source(p)) is not None:
            rope, value = True, src
        elif is_transparent(p) or is_scalar_scale(p):
            reshape = p if is_op(p, "Reshape") else reshape
            value = data_input(p)
        elif is_split(p):
            split, value = (p, value), split_source(p)
        else:
            break
    return _Trace(None, stop=value)


def _width(lin: LinearRef, split: tuple | None) -> int | None:
    """Features per token of the part of ``lin``'s output taken by ``split``."""
    if split is None:
        return lin.out_features
    node, part = split
    if is_op(node, "Split"):
        sizes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if sizes is None and "split" in node.attributes:
            sizes = np.array(node.attributes["split"].as_ints())
        if sizes is not None and len(sizes) == len(node.outputs):
            return int(sizes[list(node.outputs).index(part)])
        return lin.out_features // len(node.outputs)
    a, b = shape_of(part), shape_of(node.inputs[0])
    if a is None or b is None or sorted(map(str, (d for d in a if isinstance(d, str)))) != \
            sorted(map(str, (d for d in b if isinstance(d, str)))):
        return None
    pa = int(np.prod([d for d in a if isinstance(d, int)]))
    pb = int(np.prod([d for d in b if isinstance(d, int)]))
    return pa * lin.out_features // pb if pb else None


def _head_dim(core: _Core, trace: _Trace) -> int | None:
    shape = shape_of(core.q)
    if shape and isinstance(shape[-1], int) and len(shape) == 4:
        return shape[-1]
    if is_op(core.node, "Attention") and "q_num_heads" in core.node.attributes and trace.width:
        return trace.width // core.node.attributes.get_int("q_num_heads")
    if trace.reshape is not None:
        target = trace.reshape.inputs[1]
        arr = const_array(target)
        if arr is None and is_op(producer(target), "Concat"):
            arr = const_array(producer(target).inputs[-1])
        if arr is not None and arr.size and int(arr.flatten()[-1]) > 0:
            return int(arr.flatten()[-1])
    return None


def _attention(ctx: _Ctx, core: _Core) -> tuple[AttentionMap | None, list[NormRef]]:
    traces = {r: _trace_projection(ctx, v) for r, v in zip("qkv", (core.q, core.k, core.v))}
    if missing := [f"{r} stops at {getattr(t.stop, 'name', t.stop)}"
                   for r, t in traces.items() if t.linear is None]:
        ctx.notes.append((core.node.name,
                          f"attention core without projections: {'; '.join(missing)}"))
        return None, []
    roles = {}
    for r, t in traces.items():
        shared = sum(u.linear is t.linear for u in traces.values()) > 1
        roles["qkv" if shared else r] = t.linear
    head_dim = _head_dim(core, traces["q"])
    q_w, k_w = traces["q"].width, traces["k"].width
    o = next((ctx.by_node[u] for u in consumers(core.out)
              if u in ctx.by_node and back(u.inputs[0]) is core.out), None)
    attn = AttentionMap(core.node, core.kind, o,
                        num_heads=q_w // head_dim if q_w and head_dim else None,
                        num_kv_heads=k_w // head_dim if k_w and head_dim else None,
                        rope=traces["q"].rope or traces["k"].rope, **roles)
    return attn, [n for t in traces.values() for n in t.norms]


# ---- blocks --------------------------------------------------------------------------------
def _out(ctx: _Ctx, ref: LinearRef) -> ir.Value:
    """The linear's output value (after its bias Add)."""
    return next(n for n, r in ctx.linears.items() if r is ref).outputs[0]


def _only_norm(ctx: _Ctx, nodes: list[ir.Node]) -> NormRef | None:
    norms = {ctx.norm_of.get(n) for n in nodes}
    return norms.pop() if len(norms) == 1 and None not in norms else None


def _through_norms(ctx: _Ctx, value: ir.Value) -> tuple[ir.Value, list[NormRef]]:
    norms = []
    while (p := producer(value := back(value))) in ctx.norm_out:
        norms.append(ctx.norm_out[p])
        value = ctx.norm_in[norms[-1]]
    return value, norms


def _residual_after(ctx: _Ctx, value: ir.Value) -> tuple[ir.Node | None, object, list]:
    """(residual add, its stream operand, norms on the way) for the branch output ``value``."""
    norms = []
    while (norm := _only_norm(ctx, terms := consumers(value))) is not None:
        norms.append(norm)
        value = norm.node.outputs[0]
    if len(terms) != 1 or not is_residual_add(terms[0]):
        return None, None, norms
    stream = next((a for a in terms[0].inputs if back(a) is not value), None)
    return terms[0], stream, norms


def _block(ctx: _Ctx, index: int, core: _Core) -> tuple[BlockMap, object, ir.Value] | None:
    attn, extra = _attention(ctx, core)
    if attn is None:
        return None
    r1, x_in, post = _residual_after(ctx, _out(ctx, attn.o)) if attn.o else (None, None, [])
    extra += post
    if r1 is None:
        ctx.notes.append((core.node.name,
                          f"block {index}: no o projection joining the residual stream"))
        return BlockMap(index, "unknown", attn, None, None, None), None, core.out
    post_ln = _only_norm(ctx, consumers(r1.outputs[0]))
    qkv = attn.qkv or attn.q
    attn_norm = post_ln or ctx.norm_out.get(producer(back(qkv.node.inputs[0])))
    stream = post_ln.node.outputs[0] if post_ln else r1.outputs[0]
    ffn, r2, ffn_norm, post_ffn = _ffn_after(ctx, stream, post_ln is not None)
    if ffn is None:
        ctx.notes.append((r1.name, f"block {index}: no FFN after the attention residual"))
    out = (ffn_norm.node.outputs[0] if post_ln and ffn_norm else
           r2.outputs[0] if r2 is not None else stream)
    block = BlockMap(index, "post-ln" if post_ln else "pre-ln", attn, ffn, attn_norm, ffn_norm,
                     tuple(a for a in (r1, r2) if a is not None),
                     tuple(sorted(extra + post_ffn, key=lambda n: order(n.node))))
    return block, x_in, out


def _ffn_after(ctx: _Ctx, stream: ir.Value, post_ln: bool) -> tuple:
    for add in consumers(stream):
        if not is_residual_add(add):
            continue
        branch = next((a for a in add.inputs if back(a) is not stream), None)
        if branch is None:
            continue
        down, post = _through_norms(ctx, branch)
        if producer(down) not in ctx.linears:
            continue
        ffn = _ffn(ctx, ctx.linears[producer(down)], order(producer(stream)))
        if ffn is None:
            continue
        x = back(ffn.up.node.inputs[0])
        norm = ctx.norm_out.get(producer(x))
        if post_ln and x is stream:
            return ffn, add, _only_norm(ctx, consumers(add.outputs[0])), post
        if not post_ln and (x is stream or (norm and back(ctx.norm_in[norm]) is stream)):
            return ffn, add, norm, post
    return None, None, None, []


def _ffn(ctx: _Ctx, down: LinearRef, floor: int) -> FFNMap | None:
    """``down(act(gate(x)) * up(x))`` or ``down(act(up(x)))``; every linear reads one x."""
    j = producer(back(down.node.inputs[0]))
    if j is None:
        return None
    sides = [back(a) for a in j.inputs] if is_op(j, "Mul") and len(j.inputs) == 2 else []
    ups = [s for s in sides if producer(s) in ctx.linears]
    gate, act, up = None, j, None
    if len(ups) == 1 and producer(other := sides[1 - sides.index(ups[0])]) is not None:
        up, act = ctx.linears[producer(ups[0])], producer(other)
    lins, region = ancestors(act.outputs[0], floor, ctx.linears)
    if len(lins) != 1:
        return None
    if up is None:
        up = ctx.linears[lins[0]]
    else:
        gate = ctx.linears[lins[0]]
    inputs = {back(lin.node.inputs[0]) for lin in (up, gate) if lin is not None}
    return FFNMap(up, down, act, act_kind(region), gate) if len(inputs) == 1 else None


# ---- ends of the stack and leftovers -------------------------------------------------------
def _ends(ctx: _Ctx, tm: TransformerMap, last_out: ir.Value, first_in: ir.Value | None) -> None:
    assigned = {ref.node for _, ref in tm.norms()}
    first = producer(back(first_in)) if first_in is not None else None
    if tm.embeddings and first in ctx.norm_out and first not in assigned:
        tm.embedding_norm = ctx.norm_out[first]
    final = _only_norm(ctx, consumers(last_out))
    if final is not None and final.node not in assigned:
        tm.final_norm = final
    used = {ref.node for _, ref in tm.linears()}
    tm.head = [ctx.by_node[n] for n in descendants(last_out)
               if n in ctx.by_node and n not in used]


def _is_parameter(value: ir.Value) -> bool:
    kind = value.metadata_props.get("pkg.torch.export.graph_signature.InputSpec.kind")
    t = value.const_value
    return (t is not None and value.dtype is not None and value.dtype.is_floating_point()
            and (len(t.shape) >= 2 or kind == "PARAMETER"))


def _unclassified(ctx: _Ctx, tm: TransformerMap) -> list[tuple[str, str]]:
    out = []
    first = order(tm.blocks[0].attn.core) if tm.blocks else None
    used = {ref.node for _, ref in tm.linears()}
    for node, ref in ctx.by_node.items():
        if node in used:
            continue
        why = ("no attention core in the graph: linear outside any transformer block"
               if first is None else "linear before the first attention block"
               if order(node) < first
               else "linear not reached from an attention core, an FFN pattern or the head")
        out.append((node.name, f"{ref.name}: {why}"))
    named = {ref.node for _, ref in tm.norms()}
    out += [(n.name, f"{ref.name}: {ref.kind} in no block, embedding or final position")
            for n, ref in ctx.norm_out.items() if n not in named]
    for value in ctx.graph.initializers.values():
        users = data_users(value)
        if users and value not in ctx.params and _is_parameter(value):
            ops = ", ".join(sorted({u.op_type for u in users}))
            why = f"parameter {value.name} read by {ops}, which spotting does not recognise"
            out.append((value.name, why))
    return out
