"""lowbit.search.sensitivity and the gradients behind it (lowbit.mixed_precision.fisher).

Tolerances: EXACT_TOL for sums that agree in exact arithmetic (float64 sums of the same
float32 terms in another order); FISHER_RTOL for a Monte-Carlo mean of 4000 squared Gaussian
projections (relative standard error ~ sqrt(2/4000) = 2.2%, bound at about 4.5 sigma).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import CalibrationError
from lowbit.mixed_precision import fisher
from lowbit.search import Candidate, SearchSpace, dequantized
from lowbit.search.sensitivity import FisherAccumulator, block_sensitivity, candidate_scores

EXACT_TOL = {"rel": 1e-10, "abs": 0.0}
FISHER_RTOL = 0.1
N, K = 64, 128
BLOCKS = [(0, 16), (16, 32), (32, 64)]


@pytest.fixture(scope="module")
def wf():
    """A weight with heavy tails (Student-t, as trained weights have) and a positive Fisher."""
    g = torch.Generator().manual_seed(0)
    w = torch.distributions.StudentT(4.0).sample((N, K)) * 0.05
    f = torch.rand(N, K, generator=g) + 0.1
    return w, f


def test_fp_and_a_candidate_equal_to_the_weight_score_zero(wf):
    w, f = wf
    space = SearchSpace(group=32, bcq_iters=3)
    s = candidate_scores(w, f, BLOCKS, [Candidate("fp", 32)], space)
    assert (s == 0).all()
    for cand in (Candidate("uniform", 4), Candidate("uniform", 8), Candidate("bcq", 1)):
        # already on the candidate's grid; for BCQ one plane (alpha * B refits exactly: more
        # planes need not, greedy + alternating fits can stall, see tests/quant/test_bcq.py)
        on_grid = dequantized(w, cand, space)
        s = candidate_scores(on_grid, f, BLOCKS, [cand, Candidate("pruned", 0)], space)
        assert (s[:, 0] <= 1e-9 * s[:, 1]).all(), cand


def test_fewer_bits_score_higher(wf):
    w, f = wf
    space = SearchSpace(group=32, bcq_iters=3)
    for code, bits in (("uniform", (2, 3, 4, 8)), ("bcq", (1, 2, 3, 4))):
        cands = [Candidate(code, b) for b in bits]
        s = candidate_scores(w, f, BLOCKS, cands, space)
        assert (s[:, :-1] > s[:, 1:]).all(), (code, s)
    pruned = candidate_scores(w, f, BLOCKS, [Candidate("pruned", 0), Candidate("uniform", 2)],
                              space)
    assert (pruned[:, 0] > pruned[:, 1]).all()


def test_pruned_is_the_estimate_of_removing_the_rows(wf):
    w, f = wf
    s = candidate_scores(w, f, BLOCKS, [Candidate("pruned", 0)], SearchSpace())[:, 0]
    for (a, b), got in zip(BLOCKS, s):
        removed = w.clone()
        removed[a:b] = 0
        whole = block_sensitivity(w, f, removed, [(0, N)])[0].item()
        assert got == pytest.approx(whole, **EXACT_TOL)
        assert got == pytest.approx(0.5 * (f[a:b].double() * w[a:b].double() ** 2).sum().item(),
                                    **EXACT_TOL)


def test_blocks_quantize_as_if_alone_and_add_up(wf):
    """Every format keeps scales per row: a block quantized inside the weight equals the block
    quantized alone, so subgroup scores are independent and sum to the whole linear's."""
    w, f = wf
    space = SearchSpace(group=32, bcq_iters=3, symmetric=False)
    cands = [Candidate("uniform", 3), Candidate("bcq", 2)]
    s = candidate_scores(w, f, BLOCKS, cands, space)
    for i, (a, b) in enumerate(BLOCKS):
        alone = candidate_scores(w[a:b], f[a:b], [(0, b - a)], cands, space)[0]
        assert s[i] == pytest.approx(alone, rel=1e-6)
    whole = candidate_scores(w, f, [(0, N)], cands, space)[0]
    assert s.sum(0) == pytest.approx(whole, **EXACT_TOL)


def test_nan_gradient_names_the_batch_and_the_weight():
    acc = FisherAccumulator()
    acc.add({"a.weight": torch.ones(2, 2)}, 0)
    with pytest.raises(CalibrationError, match=r"batch 1: .*'a.weight'.*NaN"):
        acc.add({"a.weight": torch.tensor([[1.0, float("nan")], [0, 0]])}, 1)
    with pytest.raises(CalibrationError, match="empty"):
        FisherAccumulator().fisher("a.weight")


def test_nan_loss_in_a_batch_is_named():
    lin = nn.Linear(8, 4)
    batches = [torch.randn(3, 8), torch.full((3, 8), float("inf"))]
    with pytest.raises(CalibrationError, match="batch 1"):
        fisher(lin, ["weight"], batches, progress=False)
    assert lin.weight.requires_grad   # flags restored


def test_distillation_fisher_is_the_gauss_newton_diagonal():
    """For y = W x the output-MSE Hessian diagonal at W is sum_rows x_k^2 / numel(y); the
    squared gradients of the random projection estimate it (module docstring of
    lowbit.search.sensitivity)."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=False)
    x = torch.randn(5, 6)
    acc = fisher(lin, ["weight"], [x] * 4000, progress=False)
    want = (x ** 2).sum(0).expand(3, 6) / (5 * 3)
    assert torch.allclose(acc.fisher("weight"), want, rtol=FISHER_RTOL)
