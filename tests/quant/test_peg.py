"""lowbit.quant.peg: grouping, per-group qparams, permutation helpers; Recipe overrides.

Exactness: permutations move values (indexing), so permuted weights hold the same numbers and
a linear / LayerNorm / embedding computed on permuted tensors equals the original up to the
order of float sums (FP32_TOL).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.config import PerChannel, PerEmbeddingGroup, QuantSpec, Recipe
from lowbit.errors import ConfigError
from lowbit.quant import peg
from lowbit.quant.numerics import qparams_from_range

FP32_TOL = dict(rtol=1e-5, atol=1e-5)


def test_groups_and_qparams():
    lo = torch.tensor([-1.0, -8.0, -0.5, -2.0, -0.1, -9.0])
    hi = torch.tensor([1.0, 8.0, 0.5, 2.0, 0.1, 9.0])
    order = peg.range_order(lo, hi)
    assert order.tolist() == [4, 2, 0, 3, 1, 5]
    gid = peg.group_index(order, 3)
    assert gid.tolist() == [1, 2, 0, 1, 0, 2]         # outlier channels 1 and 5 together
    scale, zp = peg.peg_qparams(lo, hi, 3, order, 0, 255, False)
    want, _ = qparams_from_range(torch.tensor(-9.0), torch.tensor(9.0), 0, 255, False)
    assert scale[1] == scale[5] == want and scale.unique().numel() == 3
    in_place, _ = peg.peg_qparams(lo, hi, 3, torch.arange(6), 0, 255, False)
    assert in_place[0] == in_place[1] and in_place[4] == in_place[5]
    assert zp.dtype == torch.int64 and scale.dtype == torch.float32


def test_k_must_divide():
    with pytest.raises(ConfigError, match=r"groups=4\) does not divide the hidden size 6"):
        peg.peg_qparams(torch.zeros(6), torch.ones(6), 4, torch.arange(6), 0, 255, False)


def test_shared_order_normalises_sites():
    a = (torch.zeros(4), torch.tensor([1.0, 1.0, 5.0, 1.0]))
    b = (torch.zeros(4), torch.tensor([100.0, 100.0, 100.0, 900.0]))
    assert peg.shared_order([a, b]).tolist()[-2:] == [2, 3]


def test_permutation_folding_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g)
    p = torch.randperm(8, generator=g)
    w_in, b = torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    w_out, b_out = torch.randn(8, 6, generator=g), torch.randn(8, generator=g)
    gamma, beta = torch.randn(8, generator=g), torch.randn(8, generator=g)
    xp = x[..., p]
    # consumer: same output from permuted input and permuted columns (both layouts)
    torch.testing.assert_close(torch.nn.functional.linear(xp, peg.permute_in(w_in, p, "out_in"), b),
                               torch.nn.functional.linear(x, w_in, b), **FP32_TOL)
    torch.testing.assert_close(xp @ peg.permute_in(w_in.T, p, "in_out"), x @ w_in.T, **FP32_TOL)
    # producer: permuted rows and bias give the permuted output
    h = torch.randn(3, 6, generator=g)
    y = torch.nn.functional.linear(h, w_out, b_out)
    yp = torch.nn.functional.linear(h, peg.permute_out(w_out, p, "out_in"),
                                    peg.permute_vector(b_out, p))
    assert torch.equal(yp, y[..., p])
    # LayerNorm is permutation-equivariant with permuted gamma / beta
    ln = torch.nn.functional.layer_norm(x, (8,), gamma, beta)
    lnp = torch.nn.functional.layer_norm(xp, (8,), peg.permute_vector(gamma, p),
                                         peg.permute_vector(beta, p))
    torch.testing.assert_close(lnp, ln[..., p], **FP32_TOL)
    # embedding columns; the inverse gather undoes it; numpy in, numpy out
    e = torch.randn(10, 8, generator=g)
    assert torch.equal(peg.permute_table(e, p)[:, peg.inverse(p)], e)
    arr = peg.permute_in(w_in.numpy(), p, "out_in")
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, w_in.numpy()[:, p.numpy()])


def test_recipe_overrides_validated():
    peg_spec = QuantSpec(bits=8, symmetric=False, granularity=PerEmbeddingGroup(4))
    r = Recipe("x", weight=None, activation=QuantSpec(symmetric=False),
               activation_overrides=(("ffn.in", peg_spec),))
    assert r.override("ffn.in", None) is peg_spec and r.override("attn.q", None) is None
    with pytest.raises(ConfigError, match="unknown key 'ffn.middle'"):
        Recipe("x", weight=None, activation=QuantSpec(),
               activation_overrides=(("ffn.middle", peg_spec),))
    with pytest.raises(ConfigError, match="PerChannel is a weight granularity"):
        Recipe("x", weight=None, activation=QuantSpec(),
               activation_overrides=(("residual", QuantSpec(granularity=PerChannel())),))
