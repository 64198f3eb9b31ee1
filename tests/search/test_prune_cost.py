"""The measured price of the pruned candidate (``prune_cost="measured"``:
lowbit.mixed_precision_prune, lowbit.search.sensitivity) and the Fisher's units, on the tiny
one-layer graphs of conftest.py.

- numbers: each unit's measured cost equals the loss increase of the graph that PruneSubgroups
  prunes structurally (FP32_TOL); the graph is left bit for bit as it was; a neuron block whose
  removal changes nothing (its neurons cancel in pairs) is priced ~0 measured, where the Taylor
  estimate prices it high, and a tight budget prunes it; per-term losses give the per-term
  Fisher (FISHER_RTOL);
- structure: o joins the tie of an attention with one kv head; a unit the graph cannot remove
  is measured as its rows zeroed and reported; bad options are refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.utils._pytree as pytree

from lowbit.capture import capture
from lowbit.errors import ConfigError
from lowbit.mixed_precision import (
    fisher,
    lm_token_losses,
    plan_for_budget,
    sensitivity_table,
)
from lowbit.passes.fx.prune_subgroups import PruneSubgroups
from lowbit.search import Budget, PerHead, PerNeurons, SearchSpace, WholeLinear
from lowbit.search.sensitivity import distillation_error, measured_costs, spread

pytest.importorskip("highspy")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")     # as test_apply_prune.py

# Pruned and masked graphs compute the same sums with zero terms left out (fp32 reassociation
# only); losses near 7 (a random 1000-token vocabulary) are then equal to about 1e-6.
FP32_TOL = 1e-5
FISHER_RTOL = 0.1   # Monte-Carlo mean over 4000 sign draws, as tests/search/test_sensitivity.py
SPACE = SearchSpace(bits=(0, 2, 4, 8), group=None, bcq_iters=2)
GRAN = (PerHead(), PerNeurons(32))


def ids(batch: int = 1, seed: int = 0) -> torch.Tensor:      # as conftest.py draws them
    return torch.randint(0, 1000, (batch, 8), generator=torch.Generator().manual_seed(seed))


def _call(gm, batch):
    return gm(**batch) if isinstance(batch, dict) else gm(*batch)


def _ids_of(batch):
    return batch["input_ids"] if isinstance(batch, dict) else batch[0]


def token_losses(out, batch):
    return lm_token_losses(out, {"input_ids": _ids_of(batch)})


def _loss(gm, batches, ref=None) -> float:
    """Mean over batches of the mean token loss (``ref``: the distillation error instead)."""
    with torch.no_grad():
        if ref is not None:
            return sum(distillation_error(_call(gm, b), _call(ref, b)) for b in batches) / len(
                batches)
        return sum(float(token_losses(_call(gm, b), b).double().mean())
                   for b in batches) / len(batches)


def _unit_name(table, unit):
    sg = table.subgroups[unit.subgroups[0]]
    return sg.tie or sg.linear


@pytest.mark.parametrize("name", ["bert1", "llama1", "gemma1"])
def test_measured_cost_is_the_loss_increase_of_the_pruned_graph(name, request, plan_for):
    gm = request.getfixturevalue(name)
    example = pytree.tree_leaves(gm.meta["lowbit_example_inputs"])[0]
    batches = [({"input_ids": ids(example.shape[0], s)} if name == "llama1"
                else (ids(example.shape[0], s),)) for s in (1, 2)]
    distil = name == "bert1"                     # BertModel has no logits: the default loss
    before = {n: p.detach().clone() for n, p in gm.state_dict().items()}
    table = sensitivity_table(gm, calibration=batches, granularity=GRAN, space=SPACE,
                              loss_fn=None if distil else token_losses, progress=False)
    assert all(torch.equal(before[n], p) for n, p in gm.state_dict().items())
    assert table.info["prune_cost"] == "measured" and table.info["prune_batches"] == 2
    assert all(u.structural for u in table.units)
    kinds = {table.subgroups[u.subgroups[0]].role for u in table.units}
    assert {"attn.q", "attn.o", "ffn.in", "ffn.out"} <= kinds      # heads, o, neurons, down
    base = 0.0 if distil else _loss(gm, batches)
    pruned_col = table.sensitivity[:, [c.pruned for c in table.candidates]][:, 0]
    for unit in table.units:
        plan = plan_for(gm, pruned=(_unit_name(table, unit),))
        pruned = PruneSubgroups(plan)(copy.deepcopy(gm)).graph
        assert pruned.meta["lowbit_pruning"]["params_after"] < sum(
            p.numel() for p in gm.parameters())
        got = _loss(pruned, batches, ref=gm if distil else None) - base
        assert unit.mean == pytest.approx(got, abs=FP32_TOL), _unit_name(table, unit)
        assert unit.cost == pytest.approx(max(unit.mean + unit.se, 0.0), rel=1e-12)   # z=1
        assert pruned_col[list(unit.subgroups)].sum() == pytest.approx(unit.cost, rel=1e-12)


def test_o_joins_the_tie_of_a_single_kv_head_and_prices_the_attention_once(plan_for):
    from transformers.models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, intermediate_size=128,
                           vocab_size=1000, max_position_embeddings=64, sliding_window=4,
                           layer_types=["full_attention"], use_cache=False)
    gm = capture(Gemma3ForCausalLM(cfg).eval(), (ids(),))
    batches = [(ids(1, s),) for s in (1, 2)]
    table = sensitivity_table(gm, calibration=batches, granularity=GRAN, space=SPACE,
                              loss_fn=token_losses, progress=False)
    tied = {s.role for s in table.subgroups if s.tie == "block0.kv0"}
    assert tied == {"attn.q", "attn.k", "attn.v", "attn.o"}
    assert not any(s.role == "attn.o" and s.tie is None for s in table.subgroups)
    unit = next(u for u in table.units if _unit_name(table, u) == "block0.kv0")
    assert len(unit.subgroups) == 4 + 1 + 1 + 1            # q heads, k, v, o
    plan = plan_for(gm, pruned=("block0.kv0", "model.layers.0.self_attn.o_proj"))
    removed = PruneSubgroups(plan)(copy.deepcopy(gm)).graph
    assert unit.mean == pytest.approx(_loss(removed, batches) - _loss(gm, batches),
                                      abs=FP32_TOL)
    for budget in (0.5, 1.0, 2.0):      # tied: the plans prune the whole attention or none
        plan = plan_for_budget(table, Budget(avg_bits=budget), progress=False)
        states = {e.pruned for e in plan.entries if e.tie == "block0.kv0"}
        assert len(states) == 1


def _cancelling_block(gm, block: int = 1, size: int = 32):
    """A copy of ``gm`` whose FFN neuron block ``block`` cancels in pairs: neuron i and
    i + size/2 share up / gate rows and have opposite down columns (scaled up 4x), so the
    block adds exactly nothing while its weights and gradients are large."""
    gm = copy.deepcopy(gm)
    p = dict(gm.named_parameters())
    up, gate, down = (f"model.layers.0.mlp.{n}_proj.weight" for n in ("up", "gate", "down"))
    a, h = block * size, size // 2
    with torch.no_grad():
        for w in (up, gate):
            p[w][a:a + h] *= 4
            p[w][a + h:a + size] = p[w][a:a + h]
        p[down][:, a:a + h] *= 4
        p[down][:, a + h:a + size] = -p[down][:, a:a + h]
    return gm


def test_a_block_whose_removal_changes_nothing_is_priced_free_and_pruned(llama1):
    gm = _cancelling_block(llama1)
    batches = [{"input_ids": ids(2, s)} for s in (1, 2, 3)]
    table = sensitivity_table(gm, calibration=batches, granularity=GRAN, space=SPACE,
                              loss_fn=token_losses, progress=False)
    unit = next(u for u in table.units if _unit_name(table, u) == "block0.ffn1")
    others = [u for u in table.units if u is not unit]
    assert abs(unit.mean) < FP32_TOL and unit.cost < FP32_TOL
    assert unit.taylor > 2 * max(u.taylor for u in others)       # Taylor: the dearest unit
    tight = Budget(avg_bits=1.5)
    measured = plan_for_budget(table, tight, progress=False)
    assert {e.pruned for e in measured.entries if e.tie == "block0.ffn1"} == {True}
    taylor = plan_for_budget(table.priced("taylor"), tight, progress=False)
    assert {e.pruned for e in taylor.entries if e.tie == "block0.ffn1"} == {False}
    assert measured.info["prune_cost"] == "measured" and taylor.info["prune_cost"] == "taylor"
    bare = table.priced("measured", margin=0.0)         # the mean alone: units' sums as priced
    col = bare.sensitivity[:, [c.pruned for c in table.candidates]][:, 0]
    for u in table.units:
        assert col[list(u.subgroups)].sum() == pytest.approx(max(u.mean, 0.0), rel=1e-12)


def test_a_unit_the_graph_cannot_remove_is_measured_as_zeroed_rows(llama1):
    """Whole linears: q pruned alone (without k and v) is no structural pruning."""
    batches = [{"input_ids": ids(2, 1)}]
    table = sensitivity_table(llama1, calibration=batches, granularity=WholeLinear(),
                              space=SPACE, loss_fn=token_losses, progress=False)
    rough = {table.subgroups[u.subgroups[0]].role for u in table.units if not u.structural}
    assert rough == {"attn.q", "attn.k", "attn.v", "ffn.in", "ffn.gate"}
    assert table.info["prune_not_structural"] == 5
    q = next(u for u in table.units if table.subgroups[u.subgroups[0]].role == "attn.q")
    zeroed = copy.deepcopy(llama1)
    with torch.no_grad():
        dict(zeroed.named_parameters())["model.layers.0.self_attn.q_proj.weight"].zero_()
    assert q.mean == pytest.approx(_loss(zeroed, batches) - _loss(llama1, batches),
                                   abs=FP32_TOL)


def test_per_term_losses_give_the_per_term_fisher():
    """l_t = 0.5 (w . x_t)^2 over T terms: random signs estimate mean_t (w.x_t)^2 x_t^2, the
    Fisher of the mean loss; a scalar mean gives (mean_t (w.x_t) x_t)^2, here ~T x smaller."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 1, bias=False)
    x = torch.randn(32, 6)

    def per_term(out, batch):
        return 0.5 * out[:, 0] ** 2

    acc = fisher(lin, ["weight"], [x] * 4000, per_term, progress=False)
    r = (x @ lin.weight.detach().t())[:, 0]
    want = ((r[:, None] * x) ** 2).mean(0, keepdim=True)
    assert torch.allclose(acc.fisher("weight"), want, rtol=FISHER_RTOL)
    assert acc.terms == 4000 * 32
    scalar = fisher(lin, ["weight"], [x], lambda o, b: per_term(o, b).mean(), progress=False)
    assert (scalar.fisher("weight") < want).all()


def test_costs_and_options():
    cost, mean, se = measured_costs([[0.2, 0.4], [-0.1, -0.3], [0.0, 0.0]])
    assert cost.tolist() == pytest.approx([0.3, 0.0, 0.0]) and mean[1] == pytest.approx(-0.2)
    assert se[0] == pytest.approx(0.1) and se[2] == 0
    cost, _, _ = measured_costs([[0.2, 0.4], [-0.1, -0.3]], margin=2.0)
    assert cost.tolist() == pytest.approx([0.5, 0.0])        # -0.2 + 2 x 0.1 -> 0
    assert spread(6.0, [1, 2, 3]).tolist() == pytest.approx([1.0, 2.0, 3.0])
    batches = [{"input_ids": ids(2, 1)}]
    with pytest.raises(ConfigError, match="prune_cost must be one of"):
        sensitivity_table(torch.fx.symbolic_trace(torch.nn.Linear(2, 2)), calibration=batches,
                          prune_cost="exact")
    with pytest.raises(ConfigError, match="prune_margin must be"):
        sensitivity_table(torch.fx.symbolic_trace(torch.nn.Linear(2, 2)), calibration=batches,
                          prune_margin=-1)
    with pytest.raises(ConfigError, match="prune_batches must be"):
        sensitivity_table(torch.fx.symbolic_trace(torch.nn.Linear(2, 2)), calibration=batches,
                          prune_batches=0)
