"""The DNAS search on a graph (lowbit.mixed_precision_dnas) on a tiny Hugging Face BERT built
from a config (random weights, fixed seeds, sequence length 8, captured once).

The weights are drawn with initializer_range 0.2 (not BERT's 0.02, whose attention is almost
uniform, so that q and k barely reach the output and any choice for them is as good as any
other): every linear then matters, and "the most accurate candidate" is well defined.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.capture import capture
from lowbit.errors import ConfigError
from lowbit.search import Budget, PerHead, PerNeurons, PrecisionPlan, SearchSpace
from lowbit.train.loop import TrainingError

transformers = pytest.importorskip("transformers")
dnas = pytest.importorskip("lowbit.mixed_precision_dnas")

VOCAB, SEQ = 1000, 8
FAST = SearchSpace(bits=(0, 2, 4, 8), group=None, bcq_iters=2)   # 7 candidates, quick fits
SPLIT = (PerHead(), PerNeurons(32))


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(seed))


BATCHES = [(_ids(s),) for s in range(4)]


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB,
                                  initializer_range=0.2)
    return capture(transformers.BertModel(cfg).eval(), (_ids(0),))


def _snapshot(gm):
    return gm.code, {n: (p.detach().clone(), p.requires_grad, p.grad)
                     for n, p in gm.named_parameters()}


def _same(gm, snap) -> bool:
    code, params = snap
    return gm.code == code and all(
        torch.equal(p, params[n][0]) and p.requires_grad == params[n][1] and p.grad is None
        for n, p in gm.named_parameters())


def _labels(plan: PrecisionPlan) -> set[str]:
    return {e.candidate.label() for e in plan.entries}


def test_lambda_zero_keeps_precision_a_huge_lambda_prunes_and_the_graph_is_untouched(bert):
    snap = _snapshot(bert)
    free = dnas.dnas_plan(bert, 0.0, calibration=BATCHES, space=FAST, steps=80,
                          progress=False)
    assert _labels(free) <= {"fp32", "int8"} and len(free.entries) == 12
    tight = dnas.dnas_plan(bert, 1e4, calibration=BATCHES, space=FAST, granularity=SPLIT,
                           steps=30, progress=False)
    assert _labels(tight) == {"pruned"} and tight.total_bytes == 0
    tuned = dnas.dnas_plan(bert, 1e-3, calibration=BATCHES, space=FAST, steps=10,
                           finetune_weights=True, weight_lr=1e-3, progress=False)
    assert tuned.info["finetune_weights"] and tuned.info["method"] == "dnas"
    assert _same(bert, snap)


def test_bisection_meets_the_budget_and_never_exceeds_it(bert):
    snap = _snapshot(bert)
    plan = dnas.search_precision_dnas(bert, Budget(avg_bits=3.0), calibration=BATCHES,
                                      space=FAST, granularity=SPLIT, steps=30, probes=6,
                                      progress=False)
    probes = plan.info["probes"]
    assert plan.total_bytes <= plan.budget_bytes and plan.average_bits <= 3.0
    assert plan.total_bytes == max(b for _, b in probes if b <= plan.budget_bytes)
    assert 1 <= len(probes) <= 6 and plan.info["lambda"] in [lam for lam, _ in probes]
    assert any(b > plan.budget_bytes for _, b in probes)              # bracketed
    assert len(plan.entries) == 36 and plan.average_bits > 2.0
    for tie in {e.tie for e in plan.entries if e.tie}:
        assert len({e.pruned for e in plan.entries if e.tie == tie}) == 1
    assert PrecisionPlan.from_dict(plan.to_dict()).entries == plan.entries
    assert _same(bert, snap)


def test_a_budget_below_the_smallest_plan_fails_before_searching(bert):
    space = SearchSpace(bits=(2, 4), codes=("uniform",), group=None, fp=False)
    smallest = 2 * (4 * 64 * (16 + 4) + 128 * (16 + 4) + 64 * (32 + 4))  # 2 bits + fp32 scale
    with pytest.raises(ConfigError, match=f"smallest choice takes {smallest} bytes"):
        dnas.search_precision_dnas(bert, smallest - 1, calibration=BATCHES, space=space,
                                   progress=False)
    with pytest.raises(ConfigError, match="fx.GraphModule"):
        dnas.search_precision_dnas(torch.nn.Linear(2, 2), 10, calibration=BATCHES)


class _Stop(Exception):
    pass


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(bert, tmp_path,
                                                                       monkeypatch):
    kw = {"calibration": BATCHES, "space": FAST, "granularity": SPLIT, "steps": 12,
          "probes": 3, "checkpoint_every": 5, "progress": False}
    whole = dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), **kw)
    calls, real = [0], dnas.output_distillation

    def dying(out, ref):
        calls[0] += 1
        if calls[0] == 12 + 8:                   # probe 2, step 8: its checkpoint is at 5
            raise _Stop
        return real(out, ref)

    monkeypatch.setattr(dnas, "output_distillation", dying)
    with pytest.raises(_Stop):
        dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), checkpoint=tmp_path, **kw)
    saved = sorted(tmp_path.glob("lambda-*.pt"))
    assert len(saved) == 2
    states = sorted((torch.load(p, weights_only=True) for p in saved), key=lambda s: s["step"])
    assert [s["step"] for s in states] == [5, 12]      # probe 2 mid-way, probe 1 finished
    assert [s["config"]["lambda"] for s in states[::-1]] == [lam for lam, _ in
                                                             whole.info["probes"][:2]]
    monkeypatch.setattr(dnas, "output_distillation", real)
    resumed = dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), checkpoint=tmp_path, **kw)
    assert resumed.entries == whole.entries
    assert resumed.info["probes"] == whole.info["probes"]
    assert resumed.info["final_loss"] == whole.info["final_loss"]


def test_a_nan_loss_stops_with_the_step_named(bert):
    calls = [0]

    def nan_at_3(out, batch):
        calls[0] += 1
        loss = out[0].pow(2).mean()
        return loss * float("nan") if calls[0] == 4 else loss

    with pytest.raises(TrainingError, match="loss is nan at step 3"):
        dnas.dnas_plan(bert, 0.1, calibration=BATCHES, space=FAST, loss_fn=nan_at_3,
                       steps=10, progress=False)


def test_one_hot_fp_logits_give_back_the_float_weights_in_the_graph_layout():
    """GPT-2's Conv1D weights are [in, out]: the mixture is built [out, in] and transposed."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False)
    gm = capture(transformers.GPT2LMHeadModel(cfg).eval(), (_ids(0),))
    net = dnas._Supernet(gm, BATCHES[:2], None, PerHead(), FAST, dnas.DEFAULT_ROLES, ())
    assert {sg.layout for sg in net.subgroups} == {"in_out"}
    logits = torch.full((len(net.subgroups), len(net.cands)), -1e4)
    logits[:, -1] = 0.0                                                  # fp32
    params = net.effective(logits, 1.0, None)
    assert all(torch.equal(params[w], net.base[w]) for w in net.stacks)
    opts = {"steps": 10, "temperature": (1.0, 0.1)}
    assert net.loss(logits, 0, 0.0, 0, None, opts).item() == 0.0
    plan = dnas.search_precision_dnas(gm, Budget(avg_bits=4.0), calibration=BATCHES[:2],
                                      granularity=PerHead(), space=FAST, steps=10, probes=4,
                                      progress=False)
    assert plan.total_bytes <= plan.budget_bytes


def test_other_settings_share_a_checkpoint_folder(bert, tmp_path):
    """Two searches that differ only in their seed write their own checkpoints into one folder
    (named by lambda and a hash of the settings) instead of refusing each other's; a rerun of
    the first reuses its own files."""
    kw = {"calibration": BATCHES, "space": FAST, "granularity": SPLIT, "steps": 4,
          "probes": 1, "progress": False, "checkpoint": tmp_path}
    first = dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), seed=0, **kw)
    dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), seed=1, **kw)
    names = sorted(p.name for p in tmp_path.glob("lambda-*.pt"))
    assert len(names) == 2 and names[0].split("-")[:2] == names[1].split("-")[:2], names
    again = dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), seed=0, **kw)
    assert again.entries == first.entries
    assert sorted(p.name for p in tmp_path.glob("lambda-*.pt")) == names
