"""AlphaTuning: only the alphas (all, or alpha_1) and the head train; the planes and every other
parameter stay bit-identical; runs resume from atomic checkpoints to the same result as an
uninterrupted run; bad configs, foreign checkpoints and NaN losses stop with clear errors."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.config import BCQ, Recipe
from lowbit.errors import ConfigError
from lowbit.train.alphatuning import (
    AlphaTuner,
    AlphaTuningConfig,
    TrainingError,
    planes_digest,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "passes" / "onnx"))
from onnx_test_models import ids, inputs, tiny_bert  # noqa: E402

RECIPE = Recipe("BCQ3_G32", weight=BCQ(bits=3, group=32), activation=None)


@pytest.fixture(scope="module")
def quantized():
    return lowbit.quantize(tiny_bert(), RECIPE, example_inputs=inputs(batch=4), progress=False)


def _task(qgm, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(64, 2)
    data = [(ids(1, seed=i)[0], i % 2) for i in range(48)]

    def collate(ex):
        return torch.stack([e[0] for e in ex]), torch.tensor([e[1] for e in ex])

    def loss_fn(batch):
        x, y = batch
        out = qgm(input_ids=x, attention_mask=torch.ones_like(x))
        h = (out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state).mean(1)
        return torch.nn.functional.cross_entropy(head(h), y)

    return head, data, collate, loss_fn


def _config(**kw):
    return AlphaTuningConfig(**{"steps": 6, "batch_size": 4, "lr": 1e-2, "log_every": 3,
                                "checkpoint_every": 3, **kw})


@pytest.mark.parametrize("alphas", ["all", "first"])
def test_trains_only_alphas_and_head(quantized, alphas):
    qgm = copy.deepcopy(quantized)
    head, data, collate, loss_fn = _task(qgm)
    before = {k: v.clone() for k, v in qgm.state_dict().items()}
    head_before = head.weight.detach().clone()
    digest = planes_digest(qgm)
    tuner = AlphaTuner(qgm, head.parameters(), _config(alphas=alphas))
    counts = tuner.counts()
    per_row_group = sum(p.numel() for _, p in tuner.alphas) // 3
    assert counts["alpha"] == (per_row_group if alphas == "first" else 3 * per_row_group)
    assert counts["head"] == 130 and counts["trainable"] == counts["alpha"] + 130
    tuner.fit(loss_fn, data, collate, progress=False)
    assert planes_digest(qgm) == digest
    assert not torch.equal(head.weight, head_before)
    changed = {k for k, v in qgm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {n for n, _ in tuner.alphas}
    if alphas == "first":
        for name, p in tuner.alphas:
            assert torch.equal(p[..., 1:], before[name][..., 1:])
            assert not torch.equal(p[..., 0], before[name][..., 0])


def test_resume_reproduces_an_uninterrupted_run(quantized, tmp_path):
    whole = copy.deepcopy(quantized)
    head_w, data, collate, loss_w = _task(whole)
    AlphaTuner(whole, head_w.parameters(), _config()).fit(loss_w, data, collate, progress=False)

    part = copy.deepcopy(quantized)
    head_p, _, _, loss_p = _task(part)
    calls = []

    def interrupted(batch):
        if len(calls) == 4:                     # dies in step 5, after the step-3 checkpoint
            raise KeyboardInterrupt
        calls.append(1)
        return loss_p(batch)

    ckpt = tmp_path / "run" / "alphas.pt"
    with pytest.raises(KeyboardInterrupt):
        AlphaTuner(part, head_p.parameters(), _config()).fit(interrupted, data, collate,
                                                             checkpoint=ckpt, progress=False)
    assert ckpt.exists() and not list(ckpt.parent.glob(".alphas.pt.*"))   # no temp left over

    again = copy.deepcopy(quantized)
    head_a, _, _, loss_a = _task(again)
    result = AlphaTuner(again, head_a.parameters(), _config()).fit(
        loss_a, data, collate, checkpoint=ckpt, progress=False)
    assert result.resumed_from == 3 and result.steps == 6 and len(result.losses) == 3
    for (name, p), (_, q) in zip(AlphaTuner(whole, (), _config()).alphas,
                                 AlphaTuner(again, (), _config()).alphas):
        assert torch.equal(p, q), name
    assert torch.equal(head_w.weight, head_a.weight)

    other = copy.deepcopy(quantized)
    head_o, _, _, loss_o = _task(other)
    with pytest.raises(TrainingError, match="another config"):
        AlphaTuner(other, head_o.parameters(), _config(lr=5e-3)).fit(
            loss_o, data, collate, checkpoint=ckpt, progress=False)


def test_errors(quantized):
    with pytest.raises(ConfigError, match="alphas must be"):
        AlphaTuningConfig(alphas="last")
    with pytest.raises(ConfigError, match="steps"):
        AlphaTuningConfig(steps=0)
    with pytest.raises(ConfigError, match="BCQ-quantized"):
        AlphaTuner(torch.nn.Linear(4, 4))
    qgm = copy.deepcopy(quantized)
    head, data, collate, _ = _task(qgm)
    with pytest.raises(TrainingError, match="loss is nan"):
        AlphaTuner(qgm, head.parameters(), _config()).fit(
            lambda b: torch.tensor(float("nan"), requires_grad=True), data, collate,
            progress=False)
    with pytest.raises(ConfigError, match="empty"):
        AlphaTuner(qgm, (), _config()).fit(lambda b: None, [], progress=False)
