"""Transformer spotting on torch.fx graphs: ``find_transformer(gm) -> TransformerMap``.

Everything is matched by data flow, never by module names (those only name what was found):

* linear   ``aten.linear(x, W[out,in], b)``; ``aten.addmm(b, x, W[in,out])`` (HF Conv1D);
  ``aten.mm/matmul(x, W[in,out])`` against a parameter.
* norm     ``aten.layer_norm``, ``aten.rms_norm`` and the decomposed RMSNorm of HF Llama/Gemma
  ``y = x * rsqrt(mean(x^2, -1, keepdim) + eps) * w`` (Gemma: ``* (1 + w)``,
  ``weight_offset=1.0``); its output is the weight product, trailing casts are not part of it.
* core     ``aten.scaled_dot_product_attention``, or ``softmax(q @ k^T * s + mask) @ v`` with
  activations on both sides (hand-written attention; nn.MultiheadAttention lowers to one of
  the two under torch.export: SDPA with ``need_weights=False``, bmm-softmax-bmm otherwise;
  core_kind "mha" is never produced, and a fused ``_native_multi_head_attention`` op would
  show up in ``unclassified`` through its parameters).
* q/k/v    traced back from the core through transparent ops, scalar scales, RoPE
  ``x*cos + cat(-x2, x1)*sin`` (also partial: ``cat(rope(x[..., :r]), x[..., r:])``), q/k
  norms and splits (split/chunk/select/slice); a linear split into several of them is
  ``attn.qkv``. Head counts: projection width / head dim (so GQA reads from k's width).
* o        the first linear that reads the core output through transparent ops.
* block    ``o -> [norm] -> add`` is the attention residual R1. The FFN residual R2 is the next
  add on the stream whose other operand traces back (through an optional norm) to a down
  projection reading ``act(gate(x)) * up(x)`` or ``act(up(x))`` with x on the stream. A fused
  gate+up linear that is chunked (Phi-3) is ``ffn.in`` with no separate gate.

Norm roles, one definition for both styles (the norm that belongs to each sub-layer):

    pre-LN   x = x + attn(attn_norm(x));   x = x + ffn(ffn_norm(x))    norm on the branch input
    post-LN  x = attn_norm(x + attn(x));   x = ffn_norm(x + ffn(x))    norm after the residual

A block is post-LN when its attention residual add feeds nothing but one norm. Other norms of
a block (Gemma's post-attention / post-feedforward norms on branch outputs, q/k norms) are
``extra_norms``. The embedding norm is a norm producing block 0's residual input; the final
norm reads the last block's output; head linears are the unassigned linears after it.
Embeddings are told apart by their index: a graph input (the largest table is the word
embedding; an input named ``*position*`` indexes positions; other inputs are token types),
``arange``, a non-constant buffer or a ``cumsum`` (positions), anything else (token types).
Every linear, embedding or norm without a role, every parameter read by an op not recognised
here, and every attention core that could not be completed lands in ``unclassified``.
"""

from __future__ import annotations

import dataclasses

from torch import fx

from lowbit.errors import PatternError
from lowbit.passes.fx.graph_utils import (
    act_kind,
    ancestors,
    aten,
    back,
    consumers,
    data_input,
    data_users,
    descendants,
    is_op,
    is_residual_add,
    is_scalar_scale,
    is_split,
    is_transparent,
    linear_input,
    match_rmsnorm,
    numel,
    param_name,
    param_names,
    rope_source,
    shape_of,
    split_source,
    strip_casts,
    strip_suffix,
    tensor_of,
)
from lowbit.passes.patterns import (
    AttentionMap,
    BlockMap,
    EmbeddingRef,
    FFNMap,
    LinearRef,
    NormRef,
    TransformerMap,
)

__all__ = ["all_norms", "find_transformer"]

_SOFTMAX = (aten.softmax.int, aten._softmax.default, aten._safe_softmax.default)
_MATMUL = (aten.matmul.default, aten.bmm.default)
_ARANGE = (aten.arange.default, aten.arange.start, aten.arange.start_step)
_POSITION_MATH = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor)


@dataclasses.dataclass
class _Ctx:
    """What a first scan of the graph recognises, and where it came from."""

    gm: fx.GraphModule
    aliases: dict
    linears: dict = dataclasses.field(default_factory=dict)    # node -> LinearRef
    norm_out: dict = dataclasses.field(default_factory=dict)   # output node -> NormRef
    norm_in: dict = dataclasses.field(default_factory=dict)    # NormRef -> input node
    norm_of: dict = dataclasses.field(default_factory=dict)    # member node -> NormRef
    params: set = dataclasses.field(default_factory=set)       # get_attr nodes of refs
    notes: list = dataclasses.field(default_factory=list)      # (name, reason)

    def param(self, attr: object, user: fx.Node) -> str | None:
        """The name of the parameter ``attr`` reads (None for activations and buffers)."""
        if id(tensor_of(self.gm, attr)) not in self.aliases:
            return None
        self.params.add(strip_casts(attr))
        return param_name(self.gm, attr, user, self.aliases)


@dataclasses.dataclass
class _Core:
    node: fx.Node
    kind: str
    q: fx.Node
    k: fx.Node
    v: fx.Node
    out: fx.Node


@dataclasses.dataclass
class _Trace:
    linear: LinearRef | None
    width: int | None = None
    rope: bool = False
    norms: tuple = ()
    stop: object = None


def find_transformer(gm: fx.GraphModule) -> TransformerMap:
    """Read the transformer structure of a GraphModule made by ``lowbit.capture``."""
    if not isinstance(gm, fx.GraphModule):
        raise PatternError(f"find_transformer() takes a torch.fx.GraphModule (from "
                           f"lowbit.capture), got {type(gm).__name__}")
    ctx = _Ctx(gm, param_names(gm))
    for node in gm.graph.nodes:
        if (ref := _linear_ref(ctx, node)) is not None:
            ctx.linears[node] = ref
    _scan_norms(ctx)
    embeddings = _embeddings(ctx)
    found = []
    for core in _cores(ctx):
        if (block := _block(ctx, len(found), core)) is not None:
            found.append(block)
    tm = TransformerMap(blocks=[b for b, _, _ in found], embeddings=embeddings)
    if found:
        _ends(ctx, tm, found[-1][2], found[0][1])
    tm.unclassified = ctx.notes + _unclassified(ctx, tm)
    return tm


# ---- recognisers ---------------------------------------------------------------------------
def _linear_ref(ctx: _Ctx, node: fx.Node) -> LinearRef | None:
    if is_op(node, aten.linear.default):
        w, b, layout = node.args[1], (node.args[2:3] or [None])[0], "out_in"
    elif is_op(node, aten.addmm.default):
        w, b, layout = node.args[2], node.args[0], "in_out"
    elif is_op(node, aten.mm.default, aten.matmul.default):
        w, b, layout = node.args[1], None, "in_out"
    else:
        return None
    t = tensor_of(ctx.gm, w)
    if t is None or t.dim() != 2 or (weight := ctx.param(w, node)) is None:
        return None
    rows, cols = t.shape
    fan_in, fan_out = (cols, rows) if layout == "out_in" else (rows, cols)
    return LinearRef(node, strip_suffix(weight), weight, ctx.param(b, node), int(fan_in),
                     int(fan_out), layout)


def _add_norm(ctx: _Ctx, ref: NormRef, x: fx.Node) -> None:
    ctx.norm_out[ref.node] = ref
    ctx.norm_in[ref] = x
    for n in ref.nodes:
        ctx.norm_of[n] = ref


def _norm_name(node: fx.Node, weight: str | None) -> str:
    if weight is not None:
        return strip_suffix(weight)
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    return stack[-1][0] if stack else node.name


def all_norms(gm: fx.GraphModule) -> dict:
    """Output node -> NormRef for every norm in the graph, with or without a role (a scale
    pair between a norm and its linears hides the norm's role from spotting)."""
    ctx = _Ctx(gm, param_names(gm))
    _scan_norms(ctx)
    return dict(ctx.norm_out)


def _scan_norms(ctx: _Ctx) -> None:
    for node in ctx.gm.graph.nodes:
        if is_op(node, aten.layer_norm.default, aten.rms_norm.default):
            kind = "layernorm" if node.target == aten.layer_norm.default else "rmsnorm"
            args = list(node.args) + [None] * 4
            w = ctx.param(args[2], node)
            b = ctx.param(args[3], node) if kind == "layernorm" else None
            _add_norm(ctx, NormRef(node, _norm_name(node, w), kind, w, b, int(args[1][-1]),
                                   (node,)), node.args[0])
        elif is_op(node, aten.rsqrt.default):
            _decomposed_rms(ctx, node)


def _decomposed_rms(ctx: _Ctx, rsqrt: fx.Node) -> None:
    if (m := match_rmsnorm(rsqrt)) is None:
        return
    weight = ctx.param(m.weight, m.out)
    dim = int(tensor_of(ctx.gm, m.weight).numel()) if weight else int(shape_of(m.x)[-1])
    _add_norm(ctx, NormRef(m.out, _norm_name(m.out, weight), "rmsnorm", weight, None, dim,
                           m.nodes, m.offset), m.x)


def _embeddings(ctx: _Ctx) -> list[EmbeddingRef]:
    found = []
    for node in ctx.gm.graph.nodes:
        t = tensor_of(ctx.gm, node.args[0]) if is_op(node, aten.embedding.default) else None
        if t is None or (weight := ctx.param(node.args[0], node)) is None:
            continue
        role = _index_kind(ctx, node.args[1])
        found.append(EmbeddingRef(node, strip_suffix(weight), weight, role, *map(int, t.shape)))
    inputs = [e for e in found if e.role == "input"]
    vocab = max((e.num_embeddings for e in inputs), default=0)
    for e in inputs:
        source = str(_index_root(e.node.args[1]).target)
        e.role = ("embedding.word" if e.num_embeddings == vocab else
                  "embedding.position" if "position" in source else "embedding.token_type")
    return found


def _index_root(idx: object) -> object:
    """Back from an embedding index through moves, slices and ``+ c`` offsets."""
    while is_transparent(idx) or is_split(idx) or (
            is_op(idx, aten.add.Tensor, aten.sub.Tensor)
            and not isinstance(idx.args[1], fx.Node)):
        idx = idx.args[0]
    return idx


def _index_kind(ctx: _Ctx, idx: object) -> str:
    root = _index_root(idx)
    if getattr(root, "op", None) == "placeholder":
        return "input"
    if is_op(root, *_ARANGE) or _counts_positions(root):
        return "embedding.position"
    buf = tensor_of(ctx.gm, root)
    if buf is not None and buf.numel() > 1 and bool((buf != buf.flatten()[0]).any()):
        return "embedding.position"
    return "embedding.token_type"


def _counts_positions(node: object) -> bool:
    """RoBERTa-style position ids: ``cumsum(mask) * mask + pad`` (first operands back)."""
    while is_op(node, *_POSITION_MATH) or is_transparent(node):
        node = node.args[0]
    return is_op(node, aten.cumsum.default)


# ---- attention -----------------------------------------------------------------------------
def _cores(ctx: _Ctx) -> list[_Core]:
    cores = []
    for node in ctx.gm.graph.nodes:
        if is_op(node, aten.scaled_dot_product_attention.default):
            cores.append(_Core(node, "sdpa", *node.args[:3], node))
        elif is_op(node, *_SOFTMAX) and (mm := _softmax_matmuls(ctx, node)) is not None:
            cores.append(_Core(node, "softmax", *mm[0].args[:2], mm[1].args[1], mm[1]))
    return cores


def _softmax_matmuls(ctx: _Ctx, softmax: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(q @ k^T, probs @ v) around ``softmax``, both between activations."""
    scores = _scores_matmul(ctx, softmax.args[0], depth=6)
    pv = next((u for u in consumers(softmax) if is_op(u, *_MATMUL) and u not in ctx.linears
               and back(u.args[0]) is softmax), None)
    return (scores, pv) if scores is not None and pv is not None else None


def _scores_matmul(ctx: _Ctx, node: object, depth: int) -> fx.Node | None:
    node = back(node, scales=True)
    if is_op(node, *_MATMUL) and node not in ctx.linears:
        return node
    masking = (aten.add.Tensor, aten.sub.Tensor, aten.masked_fill.Scalar, aten.where.self)
    if depth and is_op(node, *masking):
        for arg in node.args:
            if isinstance(arg, fx.Node) and (m := _scores_matmul(ctx, arg, depth - 1)):
                return m
    return None


def _trace_projection(ctx: _Ctx, node: object) -> _Trace:
    """Follow a core input back to its projection; note RoPE, norms and the split taken."""
    rope, norms, split = False, [], None
    while isinstance(node, fx.Node):
        if node in ctx.linears:
            lin = ctx.linears[node]
            return _Trace(lin, _width(lin, split), rope, tuple(norms))
        if node in ctx.norm_out:
            norms.append(ctx.norm_out[node])
            node = ctx.norm_in[norms[-1]]
        elif (src := rope_source(node)) is not None:
            rope, node = True, src
        elif is_transparent(node) or is_scalar_scale(node):
            node = data_input(node)
        elif is_split(node):
            split, node = node, split_source(node)
        else:
            break
    return _Trace(None, stop=node)


def _width(lin: LinearRef, split: fx.Node | None) -> int | None:
    """Features per token of the part of ``lin``'s output taken by ``split``."""
    if split is None:
        return lin.out_features
    part, whole = numel(split), numel(lin.node)
    return part * lin.out_features // whole if part and whole else None


def _attention(ctx: _Ctx, core: _Core) -> tuple[AttentionMap | None, list[NormRef]]:
    traces = {r: _trace_projection(ctx, n) for r, n in zip("qkv", (core.q, core.k, core.v))}
    if missing := [f"{r} stops at {getattr(t.stop, 'name', t.stop)}"
                   for r, t in traces.items() if t.linear is None]:
        why = f"attention core without projections: {'; '.join(missing)}"
        ctx.notes.append((core.node.name, why))
        return None, []
    roles = {}
    for r, t in traces.items():
        shared = sum(u.linear is t.linear for u in traces.values()) > 1
        roles["qkv" if shared else r] = t.linear
    head_dim = shape_of(core.q)[-1]
    q_w, k_w = traces["q"].width, traces["k"].width
    o = next((ctx.linears[u] for u in consumers(core.out)
              if u in ctx.linears and back(linear_input(u)) is core.out), None)
    attn = AttentionMap(core.node, core.kind, o, num_heads=q_w // head_dim if q_w else None,
                        num_kv_heads=k_w // head_dim if k_w else None,
                        rope=traces["q"].rope or traces["k"].rope, **roles)
    return attn, [n for t in traces.values() for n in t.norms]


# ---- blocks --------------------------------------------------------------------------------
def _only_norm(ctx: _Ctx, nodes: list[fx.Node]) -> NormRef | None:
    """The norm that all of ``nodes`` belong to, if there is exactly one."""
    norms = {ctx.norm_of.get(n) for n in nodes}
    return norms.pop() if len(norms) == 1 and None not in norms else None


def _through_norms(ctx: _Ctx, node: object) -> tuple[object, list[NormRef]]:
    """Back through transparent ops and norms to the producer."""
    norms = []
    while (node := back(node)) in ctx.norm_out:
        norms.append(ctx.norm_out[node])
        node = ctx.norm_in[norms[-1]]
    return node, norms


def _residual_after(ctx: _Ctx, node: fx.Node) -> tuple[fx.Node | None, object, list]:
    """(residual add, its stream operand, norms on the way) for the branch output ``node``."""
    norms = []
    while (norm := _only_norm(ctx, terms := consumers(node))) is not None:
        norms.append(norm)
        node = norm.node
    if len(terms) != 1 or not is_residual_add(terms[0]):
        return None, None, norms
    stream = next((a for a in terms[0].args if back(a) is not node), None)
    return terms[0], stream, norms


def _block(ctx: _Ctx, index: int, core: _Core) -> tuple[BlockMap, object, fx.Node] | None:
    """The block around ``core``, its input and its output on the residual stream."""
    attn, extra = _attention(ctx, core)
    if attn is None:
        return None
    r1, x_in, post = _residual_after(ctx, attn.o.node) if attn.o else (None, None, [])
    extra += post
    if r1 is None:
        why = f"block {index}: no o projection joining the residual stream"
        ctx.notes.append((core.node.name, why))
        return BlockMap(index, "unknown", attn, None, None, None), None, core.out
    post_ln = _only_norm(ctx, consumers(r1))
    qkv = attn.qkv or attn.q
    attn_norm = post_ln or ctx.norm_out.get(back(linear_input(qkv.node)))
    stream = post_ln.node if post_ln else r1
    ffn, r2, ffn_norm, post_ffn = _ffn_after(ctx, stream, post_ln is not None)
    if ffn is None:
        ctx.notes.append((r1.name, f"block {index}: no FFN after the attention residual"))
    out = (ffn_norm.node if post_ln and ffn_norm else r2) or stream
    style = "post-ln" if post_ln else "pre-ln"
    block = BlockMap(index, style, attn, ffn, attn_norm, ffn_norm,
                     tuple(a for a in (r1, r2) if a is not None),
                     tuple(sorted(extra + post_ffn, key=lambda n: n.node)))
    return block, x_in, out


def _ffn_after(ctx: _Ctx, stream: fx.Node, post_ln: bool) -> tuple:
    """(FFNMap, residual add, ffn_norm, branch-output norms) for the FFN reading ``stream``."""
    for add in consumers(stream):
        if not is_residual_add(add):
            continue
        branch = next((a for a in add.args if back(a) is not stream), None)
        down, post = _through_norms(ctx, branch)
        if down not in ctx.linears or (ffn := _ffn(ctx, ctx.linears[down], stream)) is None:
            continue
        x = back(linear_input(ffn.up.node))
        norm = ctx.norm_out.get(x)
        if post_ln and x is stream:
            return ffn, add, _only_norm(ctx, consumers(add)), post
        if not post_ln and (x is stream or (norm and back(ctx.norm_in[norm]) is stream)):
            return ffn, add, norm, post
    return None, None, None, []


def _ffn(ctx: _Ctx, down: LinearRef, floor: fx.Node) -> FFNMap | None:
    """``down(act(gate(x)) * up(x))`` or ``down(act(up(x)))``; every linear reads one x."""
    j = back(linear_input(down.node))
    sides = [back(a) for a in j.args] if is_op(j, aten.mul.Tensor) and len(j.args) == 2 else []
    ups = [s for s in sides if s in ctx.linears]
    gate, act, up = None, j, None
    if len(ups) == 1 and isinstance(other := sides[1 - sides.index(ups[0])], fx.Node):
        up, act = ctx.linears[ups[0]], other
    lins, region = ancestors(act, floor, ctx.linears)
    if len(lins) != 1:
        return None
    if up is None:
        up = ctx.linears[lins[0]]
    else:
        gate = ctx.linears[lins[0]]
    inputs = {back(linear_input(lin.node)) for lin in (up, gate) if lin is not None}
    return FFNMap(up, down, act, act_kind(region), gate) if len(inputs) == 1 else None


# ---- ends of the stack and leftovers -------------------------------------------------------
def _ends(ctx: _Ctx, tm: TransformerMap, last_out: fx.Node, first_in: fx.Node | None) -> None:
    """Embedding norm before block 0, final norm and head linears after the last block."""
    assigned = {ref.node for _, ref in tm.norms()}
    first = back(first_in) if first_in is not None else None
    if tm.embeddings and first in ctx.norm_out and first not in assigned:
        tm.embedding_norm = ctx.norm_out[first]
    final = _only_norm(ctx, consumers(last_out))
    if final is not None and final.node not in assigned:
        tm.final_norm = final
    used = {ref.node for _, ref in tm.linears()}
    tm.head = [ctx.linears[n] for n in descendants(last_out)
               if n in ctx.linears and n not in used]


def _unclassified(ctx: _Ctx, tm: TransformerMap) -> list[tuple[str, str]]:
    out = []
    first = tm.blocks[0].attn.core if tm.blocks else None
    used = {ref.node for _, ref in tm.linears()}
    for node, ref in ctx.linears.items():
        if node in used:
            continue
        why = ("no attention core in the graph: linear outside any transformer block"
               if first is None else "linear before the first attention block" if node < first
               else "linear not reached from an attention core, an FFN pattern or the head")
        out.append((node.name, f"{ref.name}: {why}"))
    named = {ref.node for _, ref in tm.norms()}
    out += [(n.name, f"{ref.name}: {ref.kind} in no block, embedding or final position")
            for n, ref in ctx.norm_out.items() if n not in named]
    for node in ctx.gm.graph.nodes:
        t = tensor_of(ctx.gm, node) if node.op == "get_attr" else None
        users = data_users(node) if t is not None and id(t) in ctx.aliases else []
        if users and node not in ctx.params:
            ops = ", ".join(sorted({str(u.target) for u in users}))
            why = f"parameter {node.target} read by {ops}, which spotting does not recognise"
            out.append((node.name, why))
    return out
