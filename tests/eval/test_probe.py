"""The frozen probe: its fit is the minimiser of the stated objective (checked by the
gradient of that objective, computed independently in numpy), for two classes and more, with
any integer labels."""

import numpy as np
import pytest
import torch

from lowbit.eval.probe import Probe

# L-BFGS stops when the gradient of the objective divided by C * n is below 1e-8; with n = 300
# the undivided gradient may keep 300 * 1e-8. Allow 100x that.
GRAD_ATOL = 3e-4


def _data(classes, n=300, dim=6, seed=0):
    g = np.random.default_rng(seed)
    centers = g.normal(size=(len(classes), dim)) * 1.5
    idx = g.integers(0, len(classes), n)
    x = centers[idx] + g.normal(size=(n, dim))
    return torch.from_numpy(x).float(), torch.tensor(np.asarray(classes)[idx])


def test_binary_fit_is_stationary():
    x, y = _data([0, 1])
    probe = Probe(6).fit(x, y, c=1.0)
    X, t = x.double().numpy(), (y == 1).double().numpy()
    w, b = probe.w.numpy(), float(probe.b)
    r = 1 / (1 + np.exp(-(X @ w + b))) - t              # d logloss / dz
    np.testing.assert_allclose(w + X.T @ r, 0, atol=GRAD_ATOL)   # 0.5|w|^2 + C sum logloss
    assert abs(r.sum()) < GRAD_ATOL                               # bias: not penalised
    assert probe.info["train_acc"] == pytest.approx(float((probe.predict(x) == y).double()
                                                          .mean()))
    assert probe.info["train_acc"] > 0.8


def test_multiclass_fit_is_stationary_and_keeps_labels():
    x, y = _data([3, 7, 11])
    probe = Probe(6).fit(x, y, c=0.5)
    assert probe.classes.tolist() == [3, 7, 11]
    X = x.double().numpy()
    W, b = probe.w.numpy(), probe.b.numpy()
    z = X @ W + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = (y.numpy()[:, None] == np.array([3, 7, 11])).astype(float)
    np.testing.assert_allclose(W + 0.5 * X.T @ (p - onehot), 0, atol=GRAD_ATOL)
    assert set(probe.predict(x).tolist()) <= {3, 7, 11}
    assert probe.info["train_acc"] > 0.7


def test_refuses_one_class_and_wrong_shapes():
    x, _ = _data([0, 1], n=10)
    with pytest.raises(ValueError, match="one class only"):
        Probe(6).fit(x, torch.ones(10, dtype=torch.long))
    with pytest.raises(ValueError, match="dim 5"):
        Probe(5).fit(x, torch.zeros(10, dtype=torch.long))
