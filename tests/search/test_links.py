"""Bytes of pruned plans as ``apply_precision`` leaves them (``lowbit.search.Link``,
``cost.narrowed_bytes``, the integer program's narrowing).

- the size accounting matches the pruned graph: ``plan.total_bytes`` equals the bytes of
  every block at the width the pruned graph gives its linear (o / down narrowed, dead and
  removed linears gone) in the storage ``precision_plan.storage`` picks (test_cost.py: each
  storage's bytes equal the packers' bytes);
- ``SearchSpace.fitted`` is ``precision_plan.fitted_space``;
- the integer program with narrowing equals brute force over every assignment (exact bytes),
  sees the o columns a pruned head frees, and its solution's bytes are the plan's.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.mixed_precision import plan_for_budget, sensitivity_table
from lowbit.mixed_precision_prune import plan_links
from lowbit.passes.fx.prune_subgroups import PruneSubgroups
from lowbit.passes.precision_plan import fitted_space, storage
from lowbit.passes.spot import find_transformer
from lowbit.passes.subgroups import list_subgroups
from lowbit.search import Budget, Candidate, PerHead, PerNeurons, SearchSpace, candidate_bytes
from lowbit.search.cost import narrowed_bytes
from lowbit.search.ilp import Narrowing, exact_bytes, solve
from lowbit.search.plan import Link, PrecisionPlan, narrowings
from lowbit.search.space import Subgroup
from lowbit.warning_filters import copy_graph

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SPACE = SearchSpace(group=16, bcq_iters=2)       # K = 64: o narrowed by a head of 16 -> g16


def ids(batch: int = 1, seed: int = 0) -> torch.Tensor:      # as conftest.py draws them
    return torch.randint(0, 1000, (batch, 8), generator=torch.Generator().manual_seed(seed))


def graph_bytes(gm, plan: PrecisionPlan) -> int:
    """Bytes of the plan's blocks at the widths of the pruned graph (module docstring)."""
    pruned = PruneSubgroups(plan)(copy_graph(gm)).graph
    used = {n.target for n in pruned.graph.nodes if n.op == "get_attr"}
    width = {ref.name: pruned.get_parameter(ref.weight).shape[
        1 if ref.weight_layout == "out_in" else 0]
        for _, ref in find_transformer(gm).linears() if ref.weight in used}
    total = 0
    for e in plan.entries:
        if e.pruned or e.linear not in width:
            continue
        k = width[e.linear]
        st = storage(e.code, e.bits, plan.space, k)
        group = getattr(getattr(st.spec, "granularity", None), "size", None) \
            if st.kind not in ("bcq",) else getattr(st.spec, "group", None)
        space = dataclasses.replace(plan.space, group=group if group and group < k else None)
        total += candidate_bytes(e.rows[1] - e.rows[0], k, e.candidate, space)["total"]
    return total


def linked(gm, plan_for, pruned, choices):
    base = plan_for(gm, pruned, choices, SPACE, (PerHead(), PerNeurons(32)))
    links = plan_links(gm, list_subgroups(gm, (PerHead(), PerNeurons(32))))
    return dataclasses.replace(base, links=links)


CASES = [((), (("uniform", 4),)),
         (("block0.kv1",), (("uniform", 4), ("bcq", 2))),
         (("block0.kv0", "block0.kv1", "block0.ffn0"), (("uniform", 3), ("uniform", 8))),
         (("block0.kv0", "block0.kv1", "block0.kv2", "block0.kv3"), (("uniform", 4),))]


@pytest.mark.parametrize("pruned,choices", CASES)
@pytest.mark.parametrize("name", ["bert1", "llama1"])
def test_total_bytes_are_the_bytes_of_the_pruned_graph(name, pruned, choices, request,
                                                       plan_for):
    gm = request.getfixturevalue(name)
    if name == "llama1":            # GQA 4/2: kv heads 0, 1
        pruned = tuple(p for p in pruned if p not in ("block0.kv2", "block0.kv3"))
    plan = linked(gm, plan_for, pruned, choices)
    assert plan.links, "the searches link o and down to their feeders"
    assert plan.total_bytes == graph_bytes(gm, plan)
    unlinked = dataclasses.replace(plan, links=())
    if any(p.startswith("block0.kv") for p in pruned):
        assert plan.total_bytes != unlinked.total_bytes   # o narrowed
    assert PrecisionPlan.from_dict(plan.to_dict()).total_bytes == plan.total_bytes


def test_o_pruned_whole_frees_q_k_v(bert1, plan_for):
    plan = linked(bert1, plan_for, ("encoder.layer.0.attention.output.dense",),
                  (("uniform", 4),))
    assert plan.total_bytes == graph_bytes(bert1, plan)
    qkv = [e for e in plan.entries if e.role in ("attn.q", "attn.k", "attn.v")]
    assert all(plan.entry_bytes(e) == 0 for e in qkv)


@pytest.mark.parametrize("k", list(range(8, 400, 8)))
@pytest.mark.parametrize("group", [None, 8, 32, 128])
def test_fitted_is_the_passes_fitted_space(k, group):
    space = SearchSpace(group=group)
    assert space.fitted(k) == fitted_space(space, k)


def test_narrowed_bytes_can_grow_with_a_finer_group():
    """MiniLM's o (384 x 384, int4 g128): one head of 32 pruned -> K' 352, group 32."""
    c, s = Candidate("uniform", 4), SearchSpace()
    sizes = [narrowed_bytes(384, 384, n * 32, c, s) for n in (0, 1, 4, 12)]
    assert sizes == [78336, 84480, 52224, 0]


def brute(sens, nb, pruned, ties, nws, budget):
    best = None
    for choice in itertools.product(*[range(sens.shape[1])] * sens.shape[0]):
        choice = np.array(choice)
        if any(len({pruned[t, choice[t]] for t in tie}) > 1 for tie in ties):
            continue
        b = exact_bytes(choice, nb, pruned, nws)
        if b > budget:
            continue
        v = sens[np.arange(len(choice)), choice].sum()
        if best is None or v < best[0] - 1e-12:
            best = (v, b)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_narrowing_optimum_equals_brute_force(seed):
    """3 heads (q rows each a subgroup, 2 of them tied with their k rows), o the sink,
    candidates pruned / int2 / int4 / fp32: brute force over 4^6 assignments, q and k counted
    when o is pruned whole (the program's bound; the solution's bytes are exact)."""
    rng = np.random.default_rng(seed)
    space = SearchSpace(bits=(0, 2, 4), codes=("uniform",), group=32)
    cands = space.candidates()
    subs = [Subgroup("q", "attn.q", "q.w", (32 * h, 32 * (h + 1)), 96, 96, f"kv{h}")
            for h in range(3)]
    subs += [Subgroup("k", "attn.k", "k.w", (0, 32), 96, 64, "kv0"),
             Subgroup("k", "attn.k", "k.w", (32, 64), 96, 64, "kv1"),
             Subgroup("o", "attn.o", "o.w", (0, 96), 96, 96)]
    link = Link("o", ("q[0:32]", "q[32:64]", "q[64:96]"), 32, ("q", "k"))
    nws = narrowings([link], subs, cands, space)
    nb = np.array([[candidate_bytes(s.rows[1] - s.rows[0], s.in_features, c, space)["total"]
                    for c in cands] for s in subs])
    pruned = np.array([[c.pruned for c in cands]] * len(subs))
    sens = rng.exponential(1.0, nb.shape) * (nb.max() - nb + 1) / nb.max()
    ties = [[0, 3], [1, 4]]
    lo = int(exact_bytes(np.zeros(len(subs), int), nb, pruned, nws))
    hi = int(exact_bytes(np.full(len(subs), len(cands) - 1), nb, pruned, nws))
    bound = [dataclasses.replace(nw, reads=()) for nw in nws]   # what the program models
    for budget in np.linspace(lo, hi, 5).astype(int):
        want = brute(sens, nb, pruned, ties, bound, budget)
        sol = solve(sens, nb, budget, pruned=pruned, ties=ties, narrowings=nws)
        assert sol.sensitivity == pytest.approx(want[0], rel=1e-7, abs=1e-9)
        assert sol.bytes == exact_bytes(sol.choice, nb, pruned, nws) <= budget


def test_pruning_a_head_saves_its_o_columns_in_the_program():
    """Pruning costs nothing and saves only what narrowing frees: the program prunes exactly
    when q rows + o's freed columns fit, and reports the narrowed bytes."""
    space = SearchSpace(bits=(0, 4), codes=("uniform",), group=None, fp=False)
    cands = space.candidates()
    subs = [Subgroup("q", "attn.q", "q.w", (0, 32), 64, 64, "kv0"),
            Subgroup("q", "attn.q", "q.w", (32, 64), 64, 64, "kv1"),
            Subgroup("o", "attn.o", "o.w", (0, 64), 64, 64)]
    nws = narrowings([Link("o", ("q[0:32]", "q[32:64]"), 32)], subs, cands, space)
    nb = np.array([[candidate_bytes(32 if i < 2 else 64, 64, c, space)["total"] for c in cands]
                   for i in range(3)])
    pruned = np.array([[c.pruned for c in cands]] * 3)
    sens = np.array([[1.0, 0.0], [5.0, 0.0], [9.0, 0.0]])  # prune head 0 if needed
    full = int(nb[:, 1].sum())
    q_only = nb[0, 1]                                        # old accounting's saving
    o_cols = narrowed_bytes(64, 64, 0, cands[1], space) - narrowed_bytes(64, 64, 32, cands[1],
                                                                         space)
    sol = solve(sens, nb, full - q_only - o_cols, pruned=pruned, narrowings=nws)
    assert list(sol.choice) == [0, 1, 1] and sol.bytes == full - q_only - o_cols
    blind = [Narrowing(nw.feeders, nw.sinks, nw.nbytes[:, :, :1].repeat(3, 2)) for nw in nws]
    sol = solve(sens, nb, full - q_only - o_cols, pruned=pruned, narrowings=blind)
    assert list(sol.choice) == [0, 0, 1] and sol.sensitivity == 6.0   # o counted whole: both


def test_a_searched_plan_counts_what_the_graph_stores(bert1):
    batches = [(ids(1, s),) for s in range(3)]
    table = sensitivity_table(bert1, calibration=batches, granularity=(PerHead(),
                              PerNeurons(32)), space=SPACE, progress=False)
    assert table.links
    for bits in (2.5, 3.5):
        plan = plan_for_budget(table, Budget(avg_bits=bits), progress=False)
        assert plan.total_bytes <= plan.budget_bytes
        assert plan.total_bytes == graph_bytes(bert1, plan)


def test_links_are_validated_and_old_plans_load_without_them(bert1, plan_for):
    plan = linked(bert1, plan_for, ("block0.kv1",), (("uniform", 4),))
    d = plan.to_dict()
    d["links"][0]["width"] += 1
    with pytest.raises(ConfigError, match="must cover its"):
        PrecisionPlan.from_dict(d)
    d["links"][0] = {"sink": "x"}
    with pytest.raises(ConfigError, match="link 0"):
        PrecisionPlan.from_dict(d)
    del d["links"]                       # a plan saved before links: full widths
    assert PrecisionPlan.from_dict(d).total_bytes == dataclasses.replace(plan, links=()
                                                                         ).total_bytes
