"""Transformer spotting, once for every IR: ``find_transformer(graph) -> TransformerMap``.

Written over ``lowbit.passes.view.GraphView`` (what a linear, a norm, a fused attention op,
an embedding is: ``view/fx.py`` and ``view/onnx.py``). Everything is matched by data flow,
never by module names (those only name what was found):

* core     a fused attention op, or ``softmax(q @ k^T * s + mask) @ v`` with activations on
  both sides (hand-written attention, the exporters' SDPA decomposition).
* q/k/v    traced back from the core through transparent ops, scalar scales, RoPE
  ``x*cos + cat(-x2, x1)*sin`` (also partial: ``cat(rope(x[..., :r]), x[..., r:])``), q/k
  norms and splits; a linear split into several of them is ``attn.qkv``. Head counts:
  projection width / head dim (so GQA reads from k's width).
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
Embeddings indexed by a graph input: the largest table is the word embedding, an input named
``*position*`` indexes positions, other inputs token types (other index kinds: the view).
Every linear, embedding or norm without a role, every parameter read by an op not recognised,
every refused weight and every attention core that could not be completed lands in
``unclassified`` with the reason.
"""

from __future__ import annotations

import dataclasses

from lowbit.passes.patterns import (
    AttentionMap,
    BlockMap,
    EmbeddingRef,
    FFNMap,
    LinearRef,
    NormRef,
    TransformerMap,
)
from lowbit.passes.view import GraphView, Refused, view_of

__all__ = ["find_transformer"]

_MASKING = ("add", "sub", "where", "masked_fill")


@dataclasses.dataclass
class _Ctx:
    """What a first scan of the graph recognises, and where it came from."""

    view: GraphView
    linears: dict = dataclasses.field(default_factory=dict)   # output node -> LinearRef
    by_node: dict = dataclasses.field(default_factory=dict)   # matmul node -> LinearRef
    lin_out: dict = dataclasses.field(default_factory=dict)   # LinearRef -> output value
    norm_out: dict = dataclasses.field(default_factory=dict)  # output node -> NormRef
    norm_in: dict = dataclasses.field(default_factory=dict)   # NormRef -> input value
    norm_of: dict = dataclasses.field(default_factory=dict)   # member node -> NormRef
    notes: list = dataclasses.field(default_factory=list)     # (name, reason)


@dataclasses.dataclass
class _Core:
    node: object
    kind: str
    q: object
    k: object
    v: object
    out: object


@dataclasses.dataclass
class _Trace:
    linear: LinearRef | None
    width: int | None = None
    rope: bool = False
    norms: tuple = ()
    reshape: object = None
    stop: object = None


def find_transformer(graph) -> TransformerMap:
    """Read the transformer structure of a torch.fx GraphModule (``lowbit.capture``) or an
    ONNX model (``onnx_ir.Model`` / ``Graph``, ``lowbit.load_onnx``)."""
    view = view_of(graph, "find_transformer()")
    ctx = _Ctx(view)
    for node in view.nodes():
        ref = view.linear(node)
        if isinstance(ref, Refused):
            ctx.notes.append((view.name(node), ref.reason))
        elif ref is not None:
            out = ctx.lin_out[ref] = view.linear_out(ref)
            ctx.linears[view.producer(out)] = ctx.by_node[node] = ref
    for ref, x in view.norms():
        ctx.norm_out[ref.node] = ref
        ctx.norm_in[ref] = x
        for n in ref.nodes:
            ctx.norm_of[n] = ref
    embeddings = _embeddings(view)
    found = []
    for core in _cores(ctx):
        if (block := _block(ctx, len(found), core)) is not None:
            found.append(block)
    tm = TransformerMap(blocks=[b for b, _, _ in found], embeddings=embeddings, ir=view.ir)
    if found:
        _ends(ctx, tm, found[-1][2], found[0][1])
    tm.unclassified = ctx.notes + _unclassified(ctx, tm)
    view.finish()
    return tm


def _embeddings(view: GraphView) -> list[EmbeddingRef]:
    found = [e for node in view.nodes() if (e := view.embedding(node)) is not None]
    inputs = [e for e in found if e.role == "input"]
    vocab = max((e.num_embeddings for e in inputs), default=0)
    for e in inputs:
        source = view.index_input(e)
        e.role = ("embedding.word" if e.num_embeddings == vocab else
                  "embedding.position" if "position" in source else "embedding.token_type")
    return found


# ---- attention -----------------------------------------------------------------------------
def _cores(ctx: _Ctx) -> list[_Core]:
    view, cores = ctx.view, []
    for node in view.nodes():
        if (fused := view.fused_attention(node)) is not None:
            cores.append(_Core(node, fused.kind, fused.q, fused.k, fused.v, fused.out))
        elif view.op(node) == "softmax" and (mm := _softmax_matmuls(ctx, node)) is not None:
            q, k = view.inputs(mm[0])[:2]
            cores.append(_Core(node, "softmax", q, k, view.inputs(mm[1])[1], view.out(mm[1])))
    return cores


def _softmax_matmuls(ctx: _Ctx, softmax: object) -> tuple | None:
    """(q @ k^T, probs @ v) around ``softmax``, both between activations."""
    view, probs = ctx.view, ctx.view.out(softmax)
    scores = _scores_matmul(ctx, view.inputs(softmax)[0], depth=6)
    pv = next((u for u in view.consumers(probs) if view.op(u) == "matmul"
               and u not in ctx.by_node and view.back(view.inputs(u)[0]) is probs), None)
    return (scores, pv) if scores is not None and pv is not None else None


def _scores_matmul(ctx: _Ctx, value: object, depth: int) -> object | None:
    view = ctx.view
    node = view.producer(view.back(value, scales=True))
    if view.op(node) == "matmul" and node not in ctx.by_node:
        return node
    if depth and view.op(node) in _MASKING:
        for v in view.inputs(node):
            if (m := _scores_matmul(ctx, v, depth - 1)) is not None:
                return m
    return None


def _trace_projection(ctx: _Ctx, value: object) -> _Trace:
    """Follow a core input back to its projection; note RoPE, norms, the split taken and the
    reshape that split the heads."""
    view = ctx.view
    rope, norms, split, reshape = False, [], None, None
    while value is not None:
        p = view.producer(value)
        if p in ctx.linears:
            lin = ctx.linears[p]
            width = lin.out_features if split is None else view.part_width(lin, *split)
            return _Trace(lin, width, rope, tuple(norms), reshape)
        if p in ctx.norm_out:
            norms.append(ctx.norm_out[p])
            value = ctx.norm_in[norms[-1]]
        elif (src := view.rope_source(value)) is not None:
            rope, value = True, src
        elif view.is_transparent(p) or view.is_scalar_scale(p):
            reshape = p if view.op(p) == "reshape" else reshape
            value = view.data_input(p)
        elif (src := view.split_source(p)) is not None:
            split, value = (p, value), src
        else:
            break
    return _Trace(None, stop=value)


def _attention(ctx: _Ctx, core: _Core) -> tuple[AttentionMap | None, list[NormRef]]:
    view = ctx.view
    traces = {r: _trace_projection(ctx, v) for r, v in zip("qkv", (core.q, core.k, core.v))}
    if missing := [f"{r} stops at {getattr(t.stop, 'name', t.stop)}"
                   for r, t in traces.items() if t.linear is None]:
        why = f"attention core without projections: {'; '.join(missing)}"
        ctx.notes.append((view.name(core.node), why))
        return None, []
    roles = {}
    for r, t in traces.items():
        shared = sum(u.linear is t.linear for u in traces.values()) > 1
        roles["qkv" if shared else r] = t.linear
    q = traces["q"]
    head_dim = view.head_dim(core.node, core.q, q.width, q.reshape)
    q_w, k_w = q.width, traces["k"].width
    o = next((ctx.by_node[u] for u in view.consumers(core.out) if u in ctx.by_node
              and view.back(view.linear_input(ctx.by_node[u])) is core.out), None)
    attn = AttentionMap(core.node, core.kind, o,
                        num_heads=q_w // head_dim if q_w and head_dim else None,
                        num_kv_heads=k_w // head_dim if k_w and head_dim else None,
                        rope=q.rope or traces["k"].rope, **roles)
    return attn, [n for t in traces.values() for n in t.norms]


# ---- blocks --------------------------------------------------------------------------------
def _only_norm(ctx: _Ctx, nodes: list) -> NormRef | None:
    """The norm that all of ``nodes`` belong to, if there is exactly one."""
    norms = {ctx.norm_of.get(n) for n in nodes}
    return norms.pop() if len(norms) == 1 and None not in norms else None


def _through_norms(ctx: _Ctx, value: object) -> tuple[object, list[NormRef]]:
    """Back through transparent ops and norms to the producing value."""
    view, norms = ctx.view, []
    while (p := view.producer(value := view.back(value))) in ctx.norm_out:
        norms.append(ctx.norm_out[p])
        value = ctx.norm_in[norms[-1]]
    return value, norms


def _residual_after(ctx: _Ctx, value: object) -> tuple[object, object, list]:
    """(residual add, its stream operand, norms on the way) for the branch output ``value``."""
    view, norms = ctx.view, []
    while (norm := _only_norm(ctx, terms := view.consumers(value))) is not None:
        norms.append(norm)
        value = view.out(norm.node)
    if len(terms) != 1 or not view.is_residual_add(terms[0]):
        return None, None, norms
    stream = next((a for a in view.inputs(terms[0]) if view.back(a) is not value), None)
    return terms[0], stream, norms


def _block(ctx: _Ctx, index: int, core: _Core) -> tuple[BlockMap, object, object] | None:
    """The block around ``core``, its input and its output on the residual stream."""
    view = ctx.view
    attn, extra = _attention(ctx, core)
    if attn is None:
        return None
    r1, x_in, post = (_residual_after(ctx, ctx.lin_out[attn.o]) if attn.o
                      else (None, None, []))
    extra += post
    if r1 is None:
        why = f"block {index}: no o projection joining the residual stream"
        ctx.notes.append((view.name(core.node), why))
        return BlockMap(index, "unknown", attn, None, None, None), None, core.out
    post_ln = _only_norm(ctx, view.consumers(view.out(r1)))
    qkv = attn.qkv or attn.q
    attn_norm = post_ln or ctx.norm_out.get(view.producer(view.back(view.linear_input(qkv))))
    stream = view.out(post_ln.node if post_ln else r1)
    ffn, r2, ffn_norm, post_ffn = _ffn_after(ctx, stream, post_ln is not None)
    if ffn is None:
        ctx.notes.append((view.name(r1), f"block {index}: no FFN after the attention residual"))
    out = (view.out(ffn_norm.node) if post_ln and ffn_norm else
           view.out(r2) if r2 is not None else stream)
    block = BlockMap(index, "post-ln" if post_ln else "pre-ln", attn, ffn, attn_norm, ffn_norm,
                     tuple(a for a in (r1, r2) if a is not None),
                     tuple(sorted(extra + post_ffn, key=lambda n: view.order(n.node))))
    return block, x_in, out


def _ffn_after(ctx: _Ctx, stream: object, post_ln: bool) -> tuple:
    """(FFNMap, residual add, ffn_norm, branch-output norms) for the FFN reading ``stream``."""
    view = ctx.view
    for add in view.consumers(stream):
        if not view.is_residual_add(add):
            continue
        branch = next((a for a in view.inputs(add) if view.back(a) is not stream), None)
        if branch is None:
            continue
        down, post = _through_norms(ctx, branch)
        lin = ctx.linears.get(view.producer(down))
        if lin is None or (ffn := _ffn(ctx, lin, stream)) is None:
            continue
        x = view.back(view.linear_input(ffn.up))
        norm = ctx.norm_out.get(view.producer(x))
        if post_ln and x is stream:
            return ffn, add, _only_norm(ctx, view.consumers(view.out(add))), post
        if not post_ln and (x is stream or (norm and view.back(ctx.norm_in[norm]) is stream)):
            return ffn, add, norm, post
    return None, None, None, []


def _ffn(ctx: _Ctx, down: LinearRef, floor: object) -> FFNMap | None:
    """``down(act(gate(x)) * up(x))`` or ``down(act(up(x)))``; every linear reads one x."""
    view = ctx.view
    j = view.producer(view.back(view.linear_input(down)))
    if j is None:
        return None
    operands = view.inputs(j)
    sides = [view.back(a) for a in operands] if view.op(j) == "mul" and len(operands) == 2 \
        else []
    ups = [s for s in sides if view.producer(s) in ctx.linears]
    gate, act, up = None, j, None
    if len(ups) == 1 and view.producer(other := sides[1 - sides.index(ups[0])]) is not None:
        up, act = ctx.linears[view.producer(ups[0])], view.producer(other)
    lins, region = view.ancestors(view.out(act), floor, ctx.linears)
    if len(lins) != 1:
        return None
    if up is None:
        up = ctx.linears[lins[0]]
    else:
        gate = ctx.linears[lins[0]]
    inputs = {view.back(view.linear_input(lin)) for lin in (up, gate) if lin is not None}
    return FFNMap(up, down, act, view.act_kind(region), gate) if len(inputs) == 1 else None


# ---- ends of the stack and leftovers -------------------------------------------------------
def _ends(ctx: _Ctx, tm: TransformerMap, last_out: object, first_in: object) -> None:
    """Embedding norm before block 0, final norm and head linears after the last block."""
    view = ctx.view
    assigned = {ref.node for _, ref in tm.norms()}
    first = view.producer(view.back(first_in)) if first_in is not None else None
    if tm.embeddings and first in ctx.norm_out and first not in assigned:
        tm.embedding_norm = ctx.norm_out[first]
    final = _only_norm(ctx, view.consumers(last_out))
    if final is not None and final.node not in assigned:
        tm.final_norm = final
    used = {ref.node for _, ref in tm.linears()}
    tm.head = [ctx.by_node[n] for n in view.descendants(last_out)
               if n in ctx.by_node and n not in used]


def _unclassified(ctx: _Ctx, tm: TransformerMap) -> list[tuple[str, str]]:
    view, out = ctx.view, []
    first = view.order(tm.blocks[0].attn.core) if tm.blocks else None
    used = {ref.node for _, ref in tm.linears()}
    for node, ref in ctx.by_node.items():
        if node in used:
            continue
        why = ("no attention core in the graph: linear outside any transformer block"
               if first is None else "linear before the first attention block"
               if view.order(node) < first
               else "linear not reached from an attention core, an FFN pattern or the head")
        out.append((view.name(node), f"{ref.name}: {why}"))
    named = {ref.node for _, ref in tm.norms()}
    out += [(view.name(n), f"{ref.name}: {ref.kind} in no block, embedding or final position")
            for n, ref in ctx.norm_out.items() if n not in named]
    return out + view.unrecognised_params()
