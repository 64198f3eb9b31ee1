"""DNAS options added for language models (lowbit.mixed_precision_dnas): the KL distillation
loss (``distillation="kl"``), the bisection's ``lambda_factor`` and the search on the graph's
device, on a tiny Hugging Face BERT
built from a config (random weights, fixed seeds, sequence length 8, captured once; as
test_dnas_search.py). The device test needs CUDA and skips without it.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.capture import capture
from lowbit.errors import ConfigError
from lowbit.search import Budget, SearchSpace

transformers = pytest.importorskip("transformers")
dnas = pytest.importorskip("lowbit.mixed_precision_dnas")

VOCAB, SEQ = 1000, 8
FAST = SearchSpace(bits=(0, 2, 4, 8), group=None, bcq_iters=2)


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(seed))


BATCHES = [(_ids(s),) for s in range(4)]


def _bert(device: str = "cpu"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB,
                                  initializer_range=0.2)
    return capture(transformers.BertModel(cfg).eval().to(device), (_ids(0).to(device),))


@pytest.fixture(scope="module")
def bert():
    return _bert()


def test_kl_distillation_is_zero_at_the_reference_and_the_kl_of_the_last_dim_otherwise():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 5, 7, generator=g)
    o = torch.randn(2, 5, 7, generator=g)
    assert float(dnas.kl_distillation({"logits": r}, {"logits": r})) == pytest.approx(0, abs=1e-6)
    pr, po = r.softmax(-1), o.softmax(-1)
    want = (pr * (pr.log() - po.log())).sum(-1).mean()
    got = dnas.kl_distillation((o, torch.ones(3)), (r, torch.ones(3)))
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ConfigError, match="no float output"):
        dnas.kl_distillation((torch.ones(2, dtype=torch.long),), (torch.ones(2),))


def test_kl_search_keeps_precision_when_free_and_records_its_loss(bert, tmp_path):
    plan = dnas.dnas_plan(bert, 0.0, calibration=BATCHES, space=FAST, steps=60,
                          distillation="kl", progress=False, checkpoint=tmp_path)
    assert {e.candidate.label() for e in plan.entries} <= {"fp32", "int8"}
    assert plan.info["loss"] == "kl-distillation"
    mse = dnas.dnas_plan(bert, 0.0, calibration=BATCHES, space=FAST, steps=60,
                         progress=False, checkpoint=tmp_path)
    assert mse.info["loss"] == "distillation"
    assert len(list(tmp_path.glob("*.pt"))) == 2        # the two losses share no checkpoint


def test_lambda_factor_sets_the_bisections_first_step(bert):
    plan = dnas.search_precision_dnas(bert, Budget(avg_bits=6.5), calibration=BATCHES,
                                      space=FAST, steps=4, probes=2, lambda_start=0.5,
                                      lambda_factor=1.5, progress=False)
    (lam0, b0), (lam1, _) = plan.info["probes"]
    assert lam0 == 0.5 and lam1 == pytest.approx(0.5 * 1.5 if b0 > plan.budget_bytes
                                                 else 0.5 / 1.5)


def test_an_unknown_distillation_is_refused(bert):
    with pytest.raises(ConfigError, match="distillation must be one of"):
        dnas.dnas_plan(bert, 0.0, calibration=BATCHES, space=FAST, steps=1,
                       distillation="l1", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_graph_on_the_gpu_is_searched_there_and_gives_the_cpu_plan(bert):
    kw = {"calibration": BATCHES, "space": FAST, "steps": 60, "progress": False}
    on_cpu = dnas.dnas_plan(bert, 0.0, **kw)
    on_gpu = dnas.dnas_plan(_bert("cuda"), 0.0, **kw)   # CPU batches, moved to the GPU
    assert on_gpu.total_bytes == on_cpu.total_bytes
    assert [e.candidate.label() for e in on_gpu.entries] == \
        [e.candidate.label() for e in on_cpu.entries]
