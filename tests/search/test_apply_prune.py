"""Structural pruning of a PrecisionPlan (``PruneSubgroups``, ``lowbit.passes.precision_plan``)
on tiny one-layer BERT, Llama (GQA 4/2) and Gemma-3 (GQA 4/2, q/k norms) graphs.

- structure: pruned heads and neuron blocks leave the graph (q/k/v/up/gate rows, o/down
  columns, the GQA expand/reshape head counts), the parameter count drops by exactly their
  size, a linear pruned whole becomes its bias, all heads pruned removes the attention;
  honest ``modified`` and idempotence; the user's graph is not touched;
- numbers: the pruned graph equals the float graph with the pruned heads' o columns and the
  pruned neurons' down columns zeroed (a whole-pruned linear: its weight zeroed), FP32_TOL;
- plans that do not fit: a ConfigError naming the entry.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.utils._pytree as pytree

from lowbit.errors import ConfigError
from lowbit.passes.fx.prune_subgroups import PRUNING_META, PruneSubgroups
from lowbit.passes.spot import find_transformer
from lowbit.search import PlanEntry, PrecisionPlan, SearchSpace, WholeLinear
from lowbit.testing import assert_idempotent, op_counts

FP32_TOL = 1e-5     # same sums with zero terms left out: fp32 reassociation only

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def ids(batch: int = 1, seed: int = 0) -> torch.Tensor:      # as conftest.py draws them
    return torch.randint(0, 1000, (batch, 8), generator=torch.Generator().manual_seed(seed))


def masked(gm, plan):
    """The float reference: pruned heads' o columns, pruned neurons' down columns zeroed; a
    linear pruned whole (not q/k/v/up/gate) has its weight zeroed."""
    tmap = find_transformer(gm)
    ref = copy.deepcopy(gm)
    params = dict(ref.named_parameters())
    pruned = {}
    for e in plan.entries:
        if e.pruned:
            pruned.setdefault(e.linear, []).append(e.rows)
    structural = set()
    with torch.no_grad():
        for b in tmap.blocks:
            a, f = b.attn, b.ffn
            for x, y in pruned.get(a.q.name, []):
                params[a.o.weight][:, x:y] = 0
            for x, y in pruned.get(f.up.name, []):
                params[f.down.weight][:, x:y] = 0
            structural |= {a.q.name, a.k.name, a.v.name, f.up.name} | (
                {f.gate.name} if f.gate is not None else set())
        for role, ref_ in tmap.linears():
            if ref_.name in pruned and ref_.name not in structural:
                params[ref_.weight].zero_()
    return ref


def _same(a, b, tol=FP32_TOL):
    for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def _n_params(gm) -> int:
    return sum(p.numel() for p in gm.parameters())


MODELS = ["bert1", "llama1", "gemma1"]


@pytest.mark.parametrize("name", MODELS)
def test_heads_and_neurons_leave_the_graph(name, request, plan_for):
    gm = request.getfixturevalue(name)
    example = pytree.tree_leaves(gm.meta["lowbit_example_inputs"])[0]
    batch = (ids(example.shape[0], 3),)
    before = {n: p.clone() for n, p in gm.state_dict().items()}
    plan = plan_for(gm, pruned=("block0.kv1", "block0.ffn0", "block0.ffn2"))
    tmap = find_transformer(gm)
    a, f = tmap.blocks[0].attn, tmap.blocks[0].ffn
    h, kv = a.num_heads, a.num_kv_heads
    pruned = assert_idempotent(PruneSubgroups(plan), gm)

    w = dict(pruned.named_parameters())
    assert w[a.q.weight].shape == (16 * (h - h // kv), 64)           # the q heads of kv head 1
    assert w[a.k.weight].shape == w[a.v.weight].shape == (16 * (kv - 1), 64)
    assert w[a.o.weight].shape == (64, 16 * (h - h // kv))
    assert w[f.up.weight].shape == (64, 64) and w[f.down.weight].shape == (64, 64)
    bias = 1 if a.q.bias else 0
    freed = (16 * (h // kv) * (64 + bias + 64) + 2 * 16 * (64 + bias)   # q rows + o cols, k, v
             + 64 * (64 + bias) * (2 if f.gate is not None else 1) + 64 * 64)   # up/gate, down
    assert _n_params(pruned) == _n_params(gm) - freed
    report = pruned.meta[PRUNING_META]
    assert report["kv_heads"] == {0: [g for g in range(kv) if g != 1]}
    assert report["neurons"] == {0: 64}
    assert report["params_after"] == report["params_before"] - freed
    if kv != h:        # GQA: the kv head count in expand / reshape follows (1 kv head, 2 q)
        sizes = [list(n.args[1]) for n in pruned.graph.nodes
                 if n.target == torch.ops.aten.expand.default and len(n.args[1]) == 5]
        assert sizes and all(s[1:3] == [1, 2] for s in sizes)

    kwargs = {"input_ids": batch[0]}
    _same(pruned(**kwargs), masked(gm, plan)(**kwargs))
    assert all(torch.equal(before[n], p) for n, p in gm.state_dict().items())


def test_all_heads_pruned_removes_the_attention(llama1, plan_for):
    plan = plan_for(llama1, pruned=("block0.kv0", "block0.kv1"))
    pruned = PruneSubgroups(plan)(copy.deepcopy(llama1)).graph
    counts = op_counts(pruned)
    assert "aten.scaled_dot_product_attention.default" not in counts
    assert counts["aten.linear.default"] == 4        # gate, up, down, lm_head
    assert "model.layers.0.self_attn.o_proj" in pruned.meta[PRUNING_META]["removed"]
    x = {"input_ids": ids(2, 1)}
    _same(pruned(**x), masked(llama1, plan)(**x))


def test_a_linear_pruned_whole_becomes_its_bias(bert1, plan_for):
    """o pruned whole: its output is its bias; q, k, v (only o read them) go too."""
    o = "encoder.layer.0.attention.output.dense"
    plan = plan_for(bert1, pruned=(o, "block0.ffn0", "block0.ffn1", "block0.ffn2",
                                   "block0.ffn3"))
    pruned = PruneSubgroups(plan)(copy.deepcopy(bert1)).graph
    report = pruned.meta[PRUNING_META]
    assert sorted(report["removed"]) == sorted([o, "encoder.layer.0.output.dense"])
    assert len(report["dead"]) == 4          # q, k, v, intermediate
    assert op_counts(pruned)["aten.linear.default"] == 1         # the pooler
    assert op_counts(pruned)["aten.expand.default"] >= 2
    x = (ids(1, 2),)
    _same(pruned(*x), masked(bert1, plan)(*x))


def _entries(plan, **by_index):
    out = list(plan.entries)
    for i, changes in by_index.items():
        out[int(i[1:])] = dataclasses.replace(out[int(i[1:])], **changes)
    return out


def test_plans_that_do_not_fit_name_the_entry(bert1, llama1, plan_for):
    plan = plan_for(bert1)
    q0 = plan.entries[0]
    assert q0.linear.endswith("query") and q0.rows == (0, 16)
    bad = {
        "the graph has no linear": {"linear": "encoder.layer.9.query"},
        "a plan of another model": {"in_features": 128},
        "role 'attn.k' in the plan": {"role": "attn.k"},
    }
    for msg, change in bad.items():
        entries = [dataclasses.replace(e, **change) if e.linear == q0.linear else e
                   for e in plan.entries]
        with pytest.raises(ConfigError, match=f"entry 0 .*{msg}"):
            PruneSubgroups(PrecisionPlan(tuple(entries), plan.space))(copy.deepcopy(bert1))

    def rows_of(linear, spans, pruned_span, n=64, k=64, role="attn.q"):
        return [PlanEntry(linear, role, s, k, n, *(("pruned", 0, True) if s == pruned_span
                                                   else ("fp", 32, False))) for s in spans]

    whole = plan_for(bert1, granularity=WholeLinear())
    q, o = whole.entries[0].linear, whole.entries[3].linear
    cases = [   # (entries replacing the linear's, message)
        (rows_of(q, [(0, 8), (8, 64)], (0, 8)),
         r"entry 0 \(.*query\[0:8\]\): a pruned range must cover whole heads"),
        (rows_of(q, [(0, 16), (16, 64)], (0, 16)), r"entry 0 .*heads prune as kv head"),
        (rows_of(o, [(0, 32), (32, 64)], (0, 32), role="attn.o"),
         r"entry 3 \(.*output.dense\[0:32\]\): part of a attn.o linear cannot be removed"),
    ]
    for new, msg in cases:
        entries = [e for e in whole.entries if e.linear != new[0].linear]
        at = next(i for i, e in enumerate(whole.entries) if e.linear == new[0].linear)
        entries[at:at] = new
        with pytest.raises(ConfigError, match=msg):
            PruneSubgroups(PrecisionPlan(tuple(entries), SearchSpace()))(copy.deepcopy(bert1))

    gqa = plan_for(llama1)          # one q head of kv head 0 without the other
    entries = [dataclasses.replace(e, code="pruned", bits=0, pruned=True, tie=None)
               if e.linear.endswith(("q_proj", "k_proj", "v_proj")) and e.rows == (0, 16)
               else e for e in gqa.entries]
    with pytest.raises(ConfigError, match=r"q_proj\[0:16\]\): heads prune as kv head \+ the 2 "
                                          r"q head\(s\)"):
        PruneSubgroups(PrecisionPlan(tuple(entries), gqa.space))(copy.deepcopy(llama1))
    entries = [dataclasses.replace(e, code="pruned", bits=0, pruned=True, tie=None)
               if e.linear.endswith("up_proj") and e.rows == (0, 32) else e
               for e in gqa.entries]
    with pytest.raises(ConfigError, match=r"up_proj\[0:32\]\): rows of up and gate prune "
                                          r"together"):
        PruneSubgroups(PrecisionPlan(tuple(entries), gqa.space))(copy.deepcopy(llama1))


def test_fused_qkv_heads_do_not_prune_and_bad_arguments(gpt2_1, plan_for):
    from lowbit.apply_precision import apply_precision

    with pytest.raises(ConfigError, match=r"entry \d+ \(transformer.h.0.attn.c_attn\[16:32\]\): "
                                          r"heads of a fused qkv projection do not prune yet"):
        apply_precision(gpt2_1, plan_for(gpt2_1, pruned=("block0.kv1",)), progress=False)
    with pytest.raises(ConfigError, match="captured fx.GraphModule"):
        apply_precision(torch.nn.Linear(2, 2), plan_for(gpt2_1))
    with pytest.raises(ConfigError, match="PrecisionPlan"):
        apply_precision(gpt2_1, {"entries": []})
