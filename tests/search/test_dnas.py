"""lowbit.search.dnas: the DNAS numerics (mixture, expected bytes, temperature, discretisation
with ties, the lambda bisection) on plain tensors.

Tolerances: GRAD_TOL for an autograd gradient against its closed form, both in float64 (the
same terms summed in another order); MIX_TOL for a float32 einsum against the explicit sum.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.search import Candidate, SearchSpace, dequantized
from lowbit.search.dnas import (
    bisect_lambda,
    candidate_stack,
    discretise,
    expected_bytes,
    mixture,
    temperature,
)

GRAD_TOL = {"rtol": 1e-12, "atol": 1e-15}
MIX_TOL = {"rtol": 1e-5, "atol": 1e-6}


def test_expected_bytes_gradient_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    nbytes = torch.randint(0, 10_000, (6, 7), generator=g).double()
    for temp in (1.0, 0.3):
        e = expected_bytes(logits, nbytes, temp)
        (grad,) = torch.autograd.grad(e, logits)
        p = torch.softmax(logits.detach() / temp, -1)
        closed = p * (nbytes - (p * nbytes).sum(-1, keepdim=True)) / temp
        torch.testing.assert_close(grad, closed, **GRAD_TOL)
        torch.testing.assert_close(e.detach(), (p * nbytes).sum(), **GRAD_TOL)


def test_temperature_decays_exponentially_between_its_endpoints():
    ts = [temperature(s, 50, 2.0, 0.05) for s in range(50)]
    assert ts[0] == 2.0 and ts[-1] == pytest.approx(0.05, rel=1e-12)
    ratios = np.array(ts[1:]) / np.array(ts[:-1])
    assert np.allclose(ratios, (0.05 / 2.0) ** (1 / 49), rtol=1e-12)
    assert temperature(80, 50, 2.0, 0.05) == ts[-1] and temperature(0, 1, 2.0, 0.05) == 0.05
    with pytest.raises(ConfigError, match="temperature"):
        temperature(0, 10, 0.0, 1.0)


def test_mixture_is_the_probability_weighted_sum_of_the_candidates():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 16, generator=g)
    space = SearchSpace(bits=(0, 2, 4), group=None, bcq_iters=2)
    cands = space.candidates()
    stack = candidate_stack(w, cands, space)
    assert stack.shape == (12, len(cands), 16)
    assert (stack[:, 0] == 0).all() and torch.equal(stack[:, -1], w)         # pruned, fp32
    torch.testing.assert_close(stack[:, 1], dequantized(w, cands[1], space), rtol=0, atol=0)
    p = torch.softmax(torch.randn(12, len(cands), generator=g), -1)
    explicit = sum(p[:, c:c + 1] * stack[:, c] for c in range(len(cands)))
    torch.testing.assert_close(mixture(stack, p), explicit, **MIX_TOL)
    onehot = torch.nn.functional.one_hot(torch.full((12,), 3), len(cands)).float()
    assert torch.equal(mixture(stack, onehot), stack[:, 3])


def test_discretise_takes_the_argmax_and_settles_split_ties_jointly():
    pruned = np.array([True, False, False])
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1],     # tie A: wants pruned
                                     [0.1, 0.2, 0.7],     # tie A: wants kept
                                     [0.5, 0.4, 0.1],     # tie B: wants pruned
                                     [0.45, 0.5, 0.05],   # tie B: wants kept, barely
                                     [0.9, 0.05, 0.05]]))  # free
    assert discretise(logits, pruned).tolist() == [0, 2, 0, 1, 0]
    # A: all pruned 0.6 * 0.1 < none pruned 0.3 * 0.7; B: 0.5 * 0.45 > 0.4 * 0.5
    assert discretise(logits, pruned, [[0, 1], [2, 3]]).tolist() == [1, 2, 0, 0, 0]


@dataclasses.dataclass
class _R:
    bytes: int


def test_bisection_meets_the_budget_and_reports_the_smallest_size_when_it_cannot():
    def size(lam: float) -> int:                 # bytes fall as lambda grows
        return int(1000 / (1 + 50 * lam))

    seen = []

    def probe(i, lam):
        seen.append(lam)
        return _R(size(lam))

    best, lam, history = bisect_lambda(probe, 300, probes=10, start=1e-2)
    assert best.bytes <= 300 and best.bytes == max(b for _, b in history if b <= 300)
    assert best.bytes >= 280 and len(history) == len(seen) <= 10 and size(lam) == best.bytes
    # up by 10 until within budget (0.1: 166 bytes), then geometric bisection
    assert seen[:3] == [1e-2, 1e-1, pytest.approx(10 ** -1.5)]
    best, _, history = bisect_lambda(probe, 2000, probes=10, start=1e-2)
    assert history[-1][0] <= 1e-6 and best.bytes == max(b for _, b in history)  # roomy: stops
    with pytest.raises(ConfigError, match="smallest plan reached 1 bytes"):
        bisect_lambda(probe, 0, probes=10, start=1.0, highest=10.0)
    with pytest.raises(ConfigError, match="probes"):
        bisect_lambda(probe, 5, probes=0)


def test_fp16_candidate_is_the_half_rounded_weight():
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    space = SearchSpace(bits=(8,), codes=("uniform",), fp_bytes=2, group=None)
    stack = candidate_stack(w, space.candidates(), space)
    assert space.candidates()[-1] == Candidate("fp", 16)
    assert torch.equal(stack[:, -1], w.half().float())
