"""Layer-by-layer distillation (lowbit.train.distill): one stage per block, each trains only its
block's TT parameters, its loss decreases, the rest of the student stays bit-identical, a run
resumes from its stage checkpoints without training again, and bad setups get clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.train.distill import (
    DistillConfig,
    LayerwiseDistiller,
    Stage,
    block_stages,
    output_view,
    student_parameters,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "passes" / "onnx"))
from onnx_test_models import inputs, tiny_bert

CONFIG = DistillConfig(steps=12, batch_size=1, lr=3e-3, log_every=100, checkpoint_every=100)


@pytest.fixture(scope="module")
def teacher():
    return lowbit.capture(tiny_bert(), inputs(batch=2))


def _student(teacher, bits=None):
    return lowbit.tensor_train(teacher, TT(ranks=2, bits=bits), progress=False)


def _data(n=12):
    return [inputs(batch=2, seed=50 + i) for i in range(n)]


def _collate(items):
    return items[0]


def _snapshot(gm):
    return {n: p.detach().clone() for n, p in gm.named_parameters()}


def test_stages_follow_blocks(teacher):
    student = _student(teacher)
    stages = block_stages(teacher, student)
    assert [s.index for s in stages] == [0, 1]
    assert all(s.params for s in stages)
    for s in stages:
        assert all(f"layer.{s.index}." in n and ".tt_" in n for n in s.params)
        assert s.output in {n.name for n in teacher.graph.nodes}
    every = {n for n, _ in student_parameters(student)}
    assert set(stages[0].params) | set(stages[1].params) == every


def test_output_view_shares_parameters(teacher):
    student = _student(teacher)
    stage = block_stages(teacher, student)[0]
    view = output_view(student, stage.output)
    name = stage.params[0]
    assert view.get_parameter(name) is student.get_parameter(name)
    # only block 0 survives in the view: block 1's TT cores are dead code there
    assert not any("layer.1." in str(n.target) for n in view.graph.nodes if n.op == "get_attr")
    with pytest.raises(ConfigError, match="no node 'nope'"):
        output_view(student, "nope")


@pytest.mark.parametrize("bits", [None, 8])
def test_each_stage_lowers_its_loss_and_trains_only_its_block(teacher, bits, tmp_path):
    student = _student(teacher, bits)
    before = _snapshot(student)
    distiller = LayerwiseDistiller(teacher, student, CONFIG)
    results = distiller.fit(_data(), _collate, checkpoint_dir=tmp_path, progress=False)
    assert len(results) == 2
    for r in results:
        first, last = sum(r.losses[:3]) / 3, sum(r.losses[-3:]) / 3
        assert last < first, r.losses
    trained = {n for s in distiller.stages for n in s.params}
    after = _snapshot(student)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trained
    assert all(not torch.equal(before[n], after[n]) for n in trained if ".tt_core" in n)
    # requires_grad is given back as it was
    assert all(p.requires_grad for n, p in student.named_parameters() if n in trained)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block0.pt", "block1.pt"]


def test_resume_restores_finished_stages(teacher, tmp_path):
    s1 = _student(teacher)
    LayerwiseDistiller(teacher, s1, CONFIG).fit(_data(), _collate, checkpoint_dir=tmp_path,
                                                progress=False)
    s2 = _student(teacher)
    results = LayerwiseDistiller(teacher, s2, CONFIG).fit(
        _data(), _collate, checkpoint_dir=tmp_path, progress=False)
    assert all(r.resumed_from == CONFIG.steps and r.losses == [] for r in results)
    for (n, a), (_, b) in zip(s1.named_parameters(), s2.named_parameters()):
        assert torch.equal(a, b), n


def test_bad_setups(teacher):
    with pytest.raises(ConfigError, match="no student parameter matches"):
        block_stages(teacher, teacher)
    student = _student(teacher)
    with pytest.raises(ConfigError, match="no parameter"):
        LayerwiseDistiller(teacher, student, CONFIG, stages=[Stage(0, "x", ("missing",))])
    with pytest.raises(ConfigError, match="DistillConfig"):
        LayerwiseDistiller(teacher, student, CONFIG.__dict__)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        DistillConfig(lr=0)
