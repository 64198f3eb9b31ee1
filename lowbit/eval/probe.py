"""A frozen linear probe: logistic regression on sentence embeddings, fitted once.

An encoder without a task head (all-MiniLM-L6-v2) is scored on a labelled task through a
classifier fitted on its *float* embeddings of training text, then applied unchanged to the
float and to the quantized embeddings of the test text: the quantized model is scored on how
well it reproduces the float embedding space, not on a classifier retrained for it.

Objective, as scikit-learn's ``LogisticRegression(C)`` (bias not penalised), minimised in
float64 by full-batch L-BFGS (strong Wolfe line search) from zero:

    two classes (y in {0, 1}, z = x w + b):   0.5 |w|^2 + C * sum_i logloss(z_i, y_i)
    K > 2 classes (Z = x W + b, [n, K]):      0.5 |W|^2 + C * sum_i cross_entropy(Z_i, y_i)

It is divided by ``C * n`` for conditioning (the same minimiser). The problem is convex, so
the result does not depend on the start. Labels are any integers; ``classes`` keeps them in
sorted order and ``predict`` returns them.
"""

from __future__ import annotations

import torch

__all__ = ["PROBE_C", "Probe"]

PROBE_C = 1.0          # scikit-learn convention: 0.5 |w|^2 + C * sum(logloss)
SEED = 0


class Probe:
    """Logistic regression (two classes: one weight vector; more: multinomial), fitted in
    float64. ``info`` after ``fit``: final loss, largest gradient entry, |w|, train accuracy."""

    def __init__(self, dim: int):
        self.dim = dim
        self.w = torch.zeros(dim, dtype=torch.float64)
        self.b = torch.zeros((), dtype=torch.float64)
        self.classes = torch.tensor([0, 1])
        self.info: dict = {}

    def fit(self, x: torch.Tensor, y: torch.Tensor, c: float = PROBE_C) -> Probe:
        if x.shape != (y.shape[0], self.dim):
            raise ValueError(f"Probe.fit: x {list(x.shape)} for {y.shape[0]} labels and "
                             f"dim {self.dim}")
        self.classes = torch.unique(y)
        if len(self.classes) < 2:
            raise ValueError(f"Probe.fit: one class only ({int(self.classes[0])}) in the labels")
        torch.manual_seed(SEED)
        x = x.double()
        k = len(self.classes)
        index = torch.searchsorted(self.classes, y)
        n = x.shape[0]
        shape = (x.shape[1] + 1,) if k == 2 else (x.shape[1] + 1, k)
        w = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=1000, tolerance_grad=1e-10,
                                tolerance_change=1e-14, history_size=20,
                                line_search_fn="strong_wolfe")
        target = index.double() if k == 2 else index

        def objective():
            opt.zero_grad()
            z = x @ w[:-1] + w[-1]
            data = (torch.nn.functional.binary_cross_entropy_with_logits(z, target)
                    if k == 2 else torch.nn.functional.cross_entropy(z, target))
            reg = w[:-1] @ w[:-1] if k == 2 else (w[:-1] * w[:-1]).sum()
            loss = data + 0.5 * reg / (c * n)
            loss.backward()
            return loss

        for _ in range(5):   # restarts of L-BFGS's iteration budget until the gradient is tiny
            loss = opt.step(objective)
            if w.grad.abs().max() < 1e-8:
                break
        self.w, self.b = w.detach()[:-1].clone(), w.detach()[-1].clone()
        self.info = {"loss": float(loss.detach()), "grad_max": float(w.grad.abs().max()),
                     "w_norm": float(self.w.norm()),
                     "train_acc": float((self.predict(x) == y).double().mean())}
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n]`` (two classes: > 0 means the second) or ``[n, K]``."""
        return x.double() @ self.w + self.b

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        return self.classes[(z > 0).long() if z.dim() == 1 else z.argmax(-1)]
