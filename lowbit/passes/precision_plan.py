"""A ``PrecisionPlan`` read against a graph: what is pruned, what each linear keeps and stores.

    match = match_plan(graph, plan)      # FX GraphModule or onnx_ir Model (its TransformerMap)

Written once over the TransformerMap; ``passes/fx/prune_subgroups.py`` applies it. Pruning is
structural, so only subgroups whose removal leaves a smaller model of the same kind prune:

    q, k, v rows   whole heads (``head_dim`` rows); a kv head goes with the H/KV q heads that
                   read it (GQA; MHA: q, k and v of one head). The o projection loses those
                   heads' input columns ``[h*d, (h+1)*d)``; the head counts shrink.
                   Equals the float model with o's columns of the pruned heads zeroed.
    up, gate rows  neuron blocks, the same rows of up and gate; the FFN-out (down) loses those
                   input columns. Equals the float model with down's columns zeroed.
    whole linear   any other linear (o, down, the head, a fused qkv) prunes only whole: its
                   output becomes its bias (zeros without one), the GEMM and everything only
                   it read go away. All heads (all neurons) pruned removes o (down) that way.

A surviving linear's entries, renumbered over its kept rows, merge into ``Block`` s: runs of
consecutive rows with one format (code, bits); its ``act`` is the input choice of its kept
entries (one per linear, ``search.plan``). Linears the plan does not list stay as they are.
``storage(code, bits, space, k, act=...)`` says how a block is stored and which kernel of the
TVM backend serves it (weight-only unless the input is int8)::

    fp32 / fp16          float weight (fp16: rounded to half, kept in fp32)   -> fp32 GEMM
    uniform 8, act int8  int8 per-channel symmetric whatever the group (``recipes.W8A8``'s
                         weight), static u8 input (calibrated, its activation) -> linear_u8s8
    uniform 8, per row   int8 per-channel symmetric; with ``activations`` (the legacy switch:
                         a plan that names no input choices, calibration given): static u8
                         input as above                          -> linear_u8s8; else int8
                         dequantized in the graph                -> fp32 GEMM
    uniform 4, symmetric PerGroup(group) (per row: PerGroup(K), K a power of two)
                                                                 -> linear_w4a16
    uniform 2..4 (other) the same integer codes written as BCQ planes + offset
                         (``quant.bcq.codes_as_bcq``: exact; K % 8 == 0)  -> bcq_linear
    uniform (other)      weight-only fake-quant, dequantized     -> fp32 GEMM
    bcq b                ``BCQ(b, group, iters, offset)`` of the space   -> bcq_linear

An "fp16" input changes no storage: the passes round the linear's input to half (and back)
before whatever GEMM serves the weight. ``names_inputs(plan)`` tells a plan that chose inputs
(its space offers more than "fp") from an older one, which keeps the legacy switch;
``check_calibration(plan, calibration)`` refuses "int8" inputs without calibration batches.

Pruning narrows o and down: where the plan's group no longer divides their K, the largest
power of two >= 8 below it that does is used (``fitted_space``), else one scale per row.

A plan that does not fit the graph (a linear it lacks, another shape or role, a pruned range
that splits a head or pairs heads GQA cannot pair, rows of up and gate pruned unlike, part of
an o projection pruned) raises a ConfigError naming the entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lowbit.config import BCQ, PerGroup, QuantSpec
from lowbit.errors import ConfigError
from lowbit.passes.patterns import AttentionMap, FFNMap, LinearRef, TransformerMap
from lowbit.passes.spot import find_transformer
from lowbit.quant import bcq
from lowbit.quant.numerics import quantize_weight, weight_grid
from lowbit.search.plan import PlanEntry, PrecisionPlan
from lowbit.search.space import SearchSpace

__all__ = ["Block", "HeadPruning", "LinearPlan", "NeuronPruning", "PlanMatch", "Storage",
           "bit_planes", "check_calibration", "fitted_space", "match_plan", "names_inputs",
           "storage"]


@dataclasses.dataclass(frozen=True)
class Block:
    """Rows ``rows[0]:rows[1]`` of a pruned linear (its new row numbering), one format."""

    rows: tuple[int, int]
    code: str
    bits: int


@dataclasses.dataclass(frozen=True, eq=False)
class LinearPlan:
    """A linear the plan lists: the rows it keeps (original numbering) and its blocks; no
    blocks when it goes away (pruned whole, or dead once what reads it went); ``act``: its
    input choice ("fp", "fp16", "int8"; "fp" when nothing is kept)."""

    role: str
    ref: LinearRef
    keep_rows: tuple[int, ...]
    blocks: tuple[Block, ...]
    act: str = "fp"


@dataclasses.dataclass(frozen=True, eq=False)
class HeadPruning:
    """Heads kept in one attention (q head and kv head indices); ``head_dim`` rows each."""

    block: int
    attn: AttentionMap
    head_dim: int
    keep_q: tuple[int, ...]
    keep_kv: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class NeuronPruning:
    """FFN neurons (rows of up and gate, columns of down) kept in one block."""

    block: int
    ffn: FFNMap
    keep: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class PlanMatch:
    """``linears``: the planned ones, graph order; ``heads`` / ``neurons``: attentions and
    FFNs that lose some (not all) heads / neurons; ``removed``: linears replaced by their bias
    (pruned whole, or left with no input); ``dead``: planned linears only those read."""

    linears: tuple[LinearPlan, ...]
    heads: tuple[HeadPruning, ...]
    neurons: tuple[NeuronPruning, ...]
    removed: tuple[LinearRef, ...]
    dead: tuple[str, ...]

    @property
    def pruned(self) -> bool:
        return bool(self.heads or self.neurons or self.removed)


def _where(i: int, e: PlanEntry) -> str:
    return f"PrecisionPlan entry {i} ({e.name})"


def _pruned_units(entries: list[tuple[int, PlanEntry]], unit: int, what: str) -> set[int]:
    """Indices of the ``unit``-row units the pruned entries cover; each must cover whole units."""
    out: set[int] = set()
    for i, e in entries:
        if e.pruned:
            a, b = e.rows
            if a % unit or b % unit:
                raise ConfigError(f"{_where(i, e)}: a pruned range must cover whole {what} "
                                  f"({unit} rows each); rows {a}:{b} split one")
            out |= set(range(a // unit, b // unit))
    return out


def _blocks(entries: list[tuple[int, PlanEntry]]) -> tuple[tuple[int, ...], tuple[Block, ...]]:
    keep, blocks, at = [], [], 0
    for _, e in sorted(entries, key=lambda ie: ie[1].rows):
        if e.pruned:
            continue
        a, b = e.rows
        keep.extend(range(a, b))
        if blocks and (blocks[-1].code, blocks[-1].bits) == (e.code, e.bits):
            blocks[-1] = Block((blocks[-1].rows[0], at + b - a), e.code, e.bits)
        else:
            blocks.append(Block((at, at + b - a), e.code, e.bits))
        at += b - a
    return tuple(keep), tuple(blocks)


def match_plan(graph, plan: PrecisionPlan,
               spotter: Callable[[Any], TransformerMap] | None = None) -> PlanMatch:
    """Read ``plan`` against ``graph`` (module docstring) and its structure as ``spotter``
    reads it (None: ``find_transformer``); ConfigError when it does not fit."""
    if not isinstance(plan, PrecisionPlan):
        raise ConfigError(f"expected a lowbit.search.PrecisionPlan, got {type(plan).__name__}")
    tmap = (find_transformer if spotter is None else spotter)(graph)
    refs = {ref.name: (role, ref) for role, ref in tmap.linears()}
    by: dict[str, list[tuple[int, PlanEntry]]] = {}
    for i, e in enumerate(plan.entries):
        if e.linear not in refs:
            near = ", ".join(list(refs)[:4])
            raise ConfigError(f"{_where(i, e)}: the graph has no linear {e.linear!r} (its "
                              f"linears: {near}, ...)")
        role, ref = refs[e.linear]
        if (e.out_features, e.in_features) != (ref.out_features, ref.in_features):
            raise ConfigError(f"{_where(i, e)}: the plan has {e.linear} as {e.out_features}x"
                              f"{e.in_features} ([out, in]), the graph as {ref.out_features}x"
                              f"{ref.in_features}: a plan of another model?")
        if e.role != role:
            raise ConfigError(f"{_where(i, e)}: role {e.role!r} in the plan, {role!r} in the "
                              f"graph")
        by.setdefault(e.linear, []).append((i, e))

    def pruned_rows(name: str | None, unit: int, what: str) -> set[int]:
        return _pruned_units(by.get(name, []), unit, what) if name else set()

    heads, neurons, removed, dead = [], [], [], set()
    structural = set()
    for blk in tmap.blocks:
        a = blk.attn
        if a.q is not None and a.k is not None and a.v is not None and a.num_heads:
            h, kv = a.num_heads, a.num_kv_heads or a.num_heads
            d, rep = a.q.out_features // h, h // kv
            pq, pk, pv = (pruned_rows(r.name, d, "heads") for r in (a.q, a.k, a.v))
            if pq or pk or pv:
                if pk != pv or pq != {j for g in pk for j in range(g * rep, (g + 1) * rep)}:
                    i, e = next(ie for r in (a.q, a.k, a.v) for ie in by.get(r.name, [])
                                if ie[1].pruned)
                    raise ConfigError(
                        f"{_where(i, e)}: heads prune as kv head + the {rep} q head(s) reading "
                        f"it (block {blk.index}: q heads {sorted(pq)}, k heads {sorted(pk)}, "
                        f"v heads {sorted(pv)} pruned); prune them together (tie "
                        f"'block{blk.index}.kv<j>')")
                structural |= {a.q.name, a.k.name, a.v.name}
                keep_q = tuple(j for j in range(h) if j not in pq)
                keep_kv = tuple(g for g in range(kv) if g not in pk)
                if not keep_q:
                    dead |= {a.q.name, a.k.name, a.v.name}
                    if a.o is not None:
                        removed.append(a.o)
                else:
                    heads.append(HeadPruning(blk.index, a, d, keep_q, keep_kv))
        f = blk.ffn
        if f is not None:
            pu = pruned_rows(f.up.name, 1, "neurons")
            pg = pruned_rows(f.gate.name, 1, "neurons") if f.gate is not None else pu
            if pu != pg:
                i, e = next(ie for r in (f.up, f.gate) for ie in by.get(r.name, [])
                            if ie[1].pruned)
                raise ConfigError(f"{_where(i, e)}: rows of up and gate prune together (the "
                                  f"same neurons; tie 'block{blk.index}.ffn<j>')")
            if pu:
                structural |= {f.up.name} | ({f.gate.name} if f.gate is not None else set())
                keep = tuple(j for j in range(f.up.out_features) if j not in pu)
                if not keep:
                    dead |= {r.name for r in (f.up, f.gate) if r is not None}
                    removed.append(f.down)
                else:
                    neurons.append(NeuronPruning(blk.index, f, keep))
    for name, entries in by.items():
        if name in structural or not any(e.pruned for _, e in entries):
            continue
        role, ref = refs[name]
        if not all(e.pruned for _, e in entries):
            i, e = next(ie for ie in entries if ie[1].pruned)
            what = ("heads of a fused qkv projection do not prune yet (separate q/k/v do)"
                    if role == "attn.qkv" else f"part of a {role} linear cannot be removed "
                    f"from the graph (heads of q/k/v and neuron blocks of up/gate prune; "
                    f"other linears prune whole)")
            raise ConfigError(f"{_where(i, e)}: {what}")
        if ref not in removed:
            removed.append(ref)
    for blk in tmap.blocks:     # what only a removed o / down read is dead too
        if blk.attn.o in removed:
            dead |= {r.name for _, r in blk.attn.linears() if r is not blk.attn.o}
        if blk.ffn is not None and blk.ffn.down in removed:
            dead |= {r.name for r in (blk.ffn.up, blk.ffn.gate) if r is not None}
    heads = [hp for hp in heads if hp.attn.o not in removed]          # o goes whole
    neurons = [np_ for np_ in neurons if np_.ffn.down not in removed]
    gone = {r.name for r in removed} | dead
    plans = []
    for name, entries in by.items():
        role, ref = refs[name]
        keep, blocks = _blocks(entries)
        act = next((e.act for _, e in entries if not e.pruned), "fp")
        plans.append(LinearPlan(role, ref, keep, () if name in gone else blocks, act))
    order = {name: j for j, name in enumerate(refs)}
    plans.sort(key=lambda p: order[p.ref.name])
    return PlanMatch(tuple(plans), tuple(heads), tuple(neurons), tuple(removed),
                     tuple(sorted(dead - {r.name for r in removed})))


@dataclasses.dataclass(frozen=True)
class Storage:
    """How a block is stored: ``kind`` in fp32, fp16, int8 (per-channel), int4 (group-wise,
    symmetric), codes (uniform codes as BCQ planes), bcq, dequant (fake-quant); ``spec`` the
    ``QuantSpec`` or ``BCQ``; ``kernel`` the TVM kernel that serves it (module docstring)."""

    kind: str
    spec: QuantSpec | BCQ | None
    kernel: str


def fitted_space(space: SearchSpace, k: int) -> SearchSpace:
    """``space`` with a group that divides K: pruning heads or neurons narrows o / down, and
    the plan's group may no longer divide it; then the largest power of two >= 8 below it
    that does (finer, never coarser, than planned), else one scale per row. The rule lives in
    ``SearchSpace.fitted`` (the plan's byte count uses it too)."""
    return space.fitted(k)


def names_inputs(plan: PrecisionPlan) -> bool:
    """Whether ``plan`` chose its linears' inputs (its space offers more than "fp", as every
    plan with an "fp16" / "int8" entry does); else int8 blocks take the legacy switch."""
    return set(plan.space.activations) != {"fp"} or bool(plan.activations)


def check_calibration(plan: PrecisionPlan, calibration: object) -> bool:
    """ConfigError naming the linears with "int8" inputs when ``calibration`` is None; else
    whether int8 blocks take the legacy W8A8 switch (calibration, a plan naming no inputs)."""
    int8 = [name for name, act in plan.activations.items() if act == "int8"]
    if int8 and calibration is None:
        more = f" and {len(int8) - 3} more" if len(int8) > 3 else ""
        raise ConfigError(f"the plan gives {len(int8)} linear(s) int8 inputs ({', '.join(int8[:3])}"
                          f"{more}): their static ranges need batches, pass calibration=")
    return calibration is not None and not names_inputs(plan)


def storage(code: str, bits: int, space: SearchSpace, k: int, *, activations: bool = False,
            act: str = "fp") -> Storage:
    """The storage of ``code``/``bits`` rows of a K-wide weight in ``space`` whose linear
    takes input ``act`` (module doc; the group as ``fitted_space`` adapts it)."""
    if act == "int8":
        if (code, bits) != ("uniform", 8) or not space.symmetric:
            raise ConfigError(f"storage: int8 inputs go with symmetric uniform 8-bit weights "
                              f"(the W8A8 kernel), not {code!r} {bits}")
        return Storage("int8", space.uniform_spec(8, k, act), "linear_u8s8")
    space = fitted_space(space, k)
    if code == "fp":
        return Storage(f"fp{bits}", None, "fp32")
    if code == "bcq":
        if k % 8:
            raise ConfigError(f"BCQ packs 8 columns per byte; pruning left K={k} (prune "
                              f"neuron blocks of a multiple of 8)")
        return Storage("bcq", BCQ(bits, space.bcq_group(k), space.bcq_iters, space.bcq_offset),
                       "bcq_linear")
    if code != "uniform":
        raise ConfigError(f"storage: no storage for code {code!r}")
    spec = space.uniform_spec(bits, k)
    per_row = space.per_row(k)
    if bits == 8 and space.symmetric and per_row:
        return Storage("int8", spec, "linear_u8s8" if activations else "fp32")
    if bits == 4 and space.symmetric and (not per_row or k & (k - 1) == 0):
        return Storage("int4", dataclasses.replace(spec, granularity=PerGroup(
            k if per_row else space.group)), "linear_w4a16")
    if bits <= 4 and k % 8 == 0:
        return Storage("codes", spec, "bcq_linear")
    return Storage("dequant", spec, "fp32")


def bit_planes(w, st: Storage, bits: int, site: str):
    """The ``quant.bcq.BCQWeight`` of a float32 [N, K] block stored as ``bcq`` (a BCQ fit) or
    ``codes`` (the uniform codes of ``quantize_weight`` as planes + offset: the same values)."""
    if st.kind == "bcq":
        s = st.spec
        return bcq.fit(w, s.bits, s.group, s.iters, offset=s.offset)
    if st.kind != "codes":
        raise ConfigError(f"{site}: storage {st.kind!r} is not bit planes")
    q, scale, zp = quantize_weight(w, st.spec, site)
    group = getattr(st.spec.granularity, "size", w.shape[1])
    return bcq.codes_as_bcq(q, scale, zp, weight_grid(st.spec)[0], bits, group)
