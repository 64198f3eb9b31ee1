"""Paired statistics: McNemar's exact p against hand-computed binomial tails, the counts and
the interval of the accuracy difference."""

import math

import pytest
import torch

from lowbit.eval.stats import Z95, mcnemar_p, paired


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)        # 2 * P[Bin(5, .5) <= 0]
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)  # 2 * (1 + 10) / 2^10
    assert mcnemar_p(5, 5) == 1.0                           # capped
    assert mcnemar_p(3, 7) == mcnemar_p(7, 3)


def test_paired_counts_and_interval():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    ref = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 1, 0])      # 7 right
    new = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1, 1, 0])      # 7 right
    p = paired(ref, new, labels)
    assert (p["n"], p["acc_ref"], p["acc"]) == (10, 70.0, 70.0)
    assert (p["broke"], p["fixed"], p["flips"]) == (2, 2, 4)
    assert p["diff"] == 0.0 and p["mcnemar_p"] == 1.0
    se = math.sqrt(4) / 10
    assert p["ci95"] == pytest.approx([-100 * Z95 * se, 100 * Z95 * se])


def test_identical_predictions_have_no_spread():
    labels = torch.tensor([0, 1, 1, 0])
    pred = torch.tensor([0, 1, 0, 0])
    p = paired(pred, pred.clone(), labels)
    assert p["flips"] == 0 and p["ci95"] == [0.0, 0.0] and p["acc"] == p["acc_ref"] == 75.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shapes differ"):
        paired(torch.zeros(3), torch.zeros(4), torch.zeros(3))
