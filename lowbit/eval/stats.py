"""Paired statistics of two classifiers scored on the same examples (FP and quantized).

Per example: ``a`` = the reference (FP) is right, ``b`` = the variant is right.

    broke = #(a and not b)        fixed = #(not a and b)        flips = #(pred_a != pred_b)
    diff  = acc_b - acc_a = (fixed - broke) / n

McNemar's exact test: under "both are as accurate", each example where exactly one is right
is a fair coin between broke and fixed, so the two-sided p-value is
``min(1, 2 * P[Binomial(broke + fixed, 1/2) <= min(broke, fixed)])``. The confidence interval
of ``diff`` is the Wald interval of a paired difference of proportions:

    se = sqrt(broke + fixed - (fixed - broke)^2 / n) / n,     diff +- z * se   (z = 1.96: 95%)

(zero width when nothing changed: the two agree on every example scored).
"""

from __future__ import annotations

import math

import torch

__all__ = ["Z95", "mcnemar_p", "paired"]

Z95 = 1.959964


def mcnemar_p(broke: int, fixed: int) -> float:
    """Exact two-sided McNemar test: under "the variant is as accurate as the reference", each
    changed prediction is a fair coin between broke and fixed."""
    n = broke + fixed
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(broke, fixed) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(pred_ref: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracies (in %), flips, broke / fixed, McNemar p and the 95% interval of the
    difference (in points) of ``pred`` against ``pred_ref`` on ``labels``."""
    if not pred_ref.shape == pred.shape == labels.shape:
        raise ValueError(f"paired: shapes differ: {list(pred_ref.shape)}, {list(pred.shape)}, "
                         f"{list(labels.shape)}")
    n = labels.numel()
    ok_ref, ok = pred_ref == labels, pred == labels
    broke, fixed = int((ok_ref & ~ok).sum()), int((~ok_ref & ok).sum())
    diff = (fixed - broke) / n
    se = math.sqrt(max(broke + fixed - (fixed - broke) ** 2 / n, 0.0)) / n
    return {"n": n, "acc_ref": 100 * float(ok_ref.double().mean()),
            "acc": 100 * float(ok.double().mean()), "diff": 100 * diff,
            "ci95": [100 * (diff - Z95 * se), 100 * (diff + Z95 * se)],
            "flips": int((pred != pred_ref).sum()), "broke": broke, "fixed": fixed,
            "mcnemar_p": mcnemar_p(broke, fixed)}
