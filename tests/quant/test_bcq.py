"""lowbit.quant.bcq: BCQ fitting (greedy, alternating refinement, importance), uniform as BCQ,
bit-plane packing, config errors.

Tolerances: FP32_TOL for values that are equal in exact arithmetic and differ only by float32
round-off (einsum sums of a few alpha * sign terms, float64 least squares cast back to float32).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lowbit.config import PerChannel, PerGroup, QuantSpec
from lowbit.errors import ConfigError
from lowbit.quant import bcq
from lowbit.quant.numerics import dequantize, group_view, quantize_weight

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}


def _coded(n: int, k: int, bits: int, group: int, seed: int = 0, offset: bool = False):
    """A weight that is exactly a BCQ code: super-increasing alphas per row-group (each above
    the sum of the later ones, so the 2^q codes are distinct and ordered by the planes), and
    planes in which every row-group holds each of the 2^q codes equally often, in random order.

    Balanced codes are what make recovery exact: then mean(B_i B_j) = 0 in every group, so the
    greedy alphas are already the true ones. With arbitrary planes, greedy can pick a wrong
    later plane and the alternating refinement can stall in a local optimum (it does, on a few
    random 24x64 q=3 codes: the reference algorithm shares that)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(group) % 2 ** bits
    perm = torch.rand(n, k // group, group, generator=g).argsort(-1)
    cid = ids[perm].reshape(n, k)
    planes = (((cid.unsqueeze(0) >> torch.arange(bits).view(-1, 1, 1)) & 1) * 2 - 1)
    base = torch.tensor([1.0, 0.4, 0.15, 0.05][:bits])
    alpha = (torch.rand(n, k // group, 1, generator=g) + 0.5) * base
    off = torch.randn(n, k // group, generator=g) * 0.3 if offset else None
    return bcq.BCQWeight(planes.to(torch.int8), alpha, off, group)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("group", [None, 16])
def test_exact_code_is_recovered(bits, group):
    true = _coded(24, 64, bits, group or 64, seed=bits)
    w = true.dequantize()
    got = bcq.fit(w, bits, group)
    assert got.planes_i8.dtype == torch.int8 and got.shape == (24, 64) and got.bits == bits
    assert torch.equal(got.planes_i8, true.planes_i8)
    torch.testing.assert_close(got.alpha_f32, true.alpha_f32, **FP32_TOL)
    torch.testing.assert_close(got.dequantize(), w, **FP32_TOL)
    if bits > 1:  # one plane fewer cannot represent it
        assert bcq.group_error(w, bcq.fit(w, bits - 1, group)).min() > 1e-3


def test_exact_code_with_offset_is_recovered():
    true = _coded(8, 32, 3, 8, seed=7, offset=True)
    w = true.dequantize()
    got = bcq.fit(w, 3, 8, offset=True)
    torch.testing.assert_close(got.dequantize(), w, **FP32_TOL)
    torch.testing.assert_close(got.offset_f32, true.offset_f32, **FP32_TOL)


def test_least_squares_step_recovers_alphas_from_true_planes():
    """Arbitrary (unbalanced) planes: given the true B, one refinement step finds the alphas."""
    g = torch.Generator().manual_seed(8)
    planes = (torch.randint(0, 2, (3, 16, 64), generator=g) * 2 - 1).to(torch.int8)
    alpha = (torch.rand(16, 4, 1, generator=g) + 0.5) * torch.tensor([1.0, 0.4, 0.15])
    w = bcq.BCQWeight(planes, alpha, None, 16).dequantize()
    got = bcq.refine(w, bcq.BCQWeight(planes, alpha * 1.3, None, 16), iters=1)
    assert torch.equal(got.planes_i8, planes)
    torch.testing.assert_close(got.alpha_f32, alpha, **FP32_TOL)


def test_one_bit_is_closed_form():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    f = bcq.fit(w, 1, 8)
    assert torch.equal(f.planes_i8[0], torch.where(w >= 0, 1, -1).to(torch.int8))
    torch.testing.assert_close(f.alpha_f32[..., 0], group_view(w, 8).abs().mean(-1), **FP32_TOL)


@pytest.mark.parametrize("offset", [False, True])
def test_refine_never_worse_and_error_falls_with_bits(offset):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.02
    errs = []
    for bits in (1, 2, 3, 4):
        greedy = bcq.fit_greedy(w, bits, 64, offset=offset)
        refined = bcq.refine(w, greedy, iters=10)
        e_g, e_r = bcq.group_error(w, greedy), bcq.group_error(w, refined)
        assert (e_r <= e_g).all()
        if bits > 1:
            assert e_r.sum() < 0.9 * e_g.sum()
        errs.append(float(e_r.sum()))
    assert all(a > 1.5 * b for a, b in itertools.pairwise(errs)), errs


def test_refine_is_deterministic_and_iters_zero_is_identity():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    a, b = bcq.fit(w, 3, 32), bcq.fit(w, 3, 32)
    assert torch.equal(a.planes_i8, b.planes_i8) and torch.equal(a.alpha_f32, b.alpha_f32)
    greedy = bcq.fit_greedy(w, 3, 32)
    same = bcq.refine(w, greedy, iters=0)
    assert torch.equal(same.planes_i8, greedy.planes_i8)


def test_importance_lowers_weighted_error():
    """Salient input columns (6% of them weighted 100x, as activation-outlier channels would
    be): the weighted fit's weighted error over the unweighted fit's, measured 0.88 / 0.67 /
    0.59 / 0.76 at q = 1..4 (alternating refinement finds local optima, so the gain is not
    monotone in q); bounds a little above."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, 256, generator=g)
    imp = torch.where(torch.rand(256, generator=g) < 0.06, 100.0, 1.0)
    for bits, bound in zip((1, 2, 3, 4), (0.95, 0.8, 0.7, 0.85)):
        plain = bcq.fit(w, bits, 128)
        weighted = bcq.fit(w, bits, 128, importance=imp)
        ratio = bcq.group_error(w, weighted, imp).sum() / bcq.group_error(w, plain, imp).sum()
        assert ratio < bound, (bits, float(ratio))
        # and the unweighted error pays for it
        assert bcq.group_error(w, weighted).sum() > bcq.group_error(w, plain).sum()


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group", [None, 32])
def test_uniform_is_bcq_with_offset(bits, group):
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(bits)) * 0.05
    w[0] = w[0].abs()                          # a row (group) that is all positive
    gran = PerChannel(axis=0) if group is None else PerGroup(size=group)
    spec = QuantSpec(bits=bits, symmetric=False, granularity=gran)
    q, scale, zp = quantize_weight(w, spec)
    if group is None:
        ref = dequantize(q, scale, zp)
    else:
        ref = dequantize(group_view(q, group), scale, zp).reshape(w.shape)
    coded = bcq.uniform_as_bcq(w, bits, group)
    assert coded.offset_f32 is not None and coded.bits == bits
    assert set(coded.planes_i8.unique().tolist()) <= {-1, 1}
    torch.testing.assert_close(coded.dequantize(), ref, **FP32_TOL)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group", [None, 32])
def test_symmetric_codes_are_bcq_with_offset(bits, group):
    """``codes_as_bcq``: the restricted symmetric grid (2^b - 1 levels, zero point 0) of
    ``quantize_weight`` as b planes + offset, the same values (mixed precision's uniform
    2/3-bit blocks run on the BCQ kernel this way)."""
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(bits)) * 0.05
    gran = PerChannel(axis=0) if group is None else PerGroup(size=group)
    spec = QuantSpec(bits=bits, symmetric=True, granularity=gran)
    q, scale, zp = quantize_weight(w, spec)
    g = 128 if group is None else group
    ref = dequantize(group_view(q, g), scale.reshape(16, -1, 1), zp.reshape(16, -1, 1))
    coded = bcq.codes_as_bcq(q, scale, zp, -(2 ** (bits - 1) - 1), bits, g)
    assert coded.bits == bits and coded.group == g
    torch.testing.assert_close(coded.dequantize(), ref.reshape(w.shape), **FP32_TOL)
    with pytest.raises(ConfigError, match="codes outside"):
        bcq.codes_as_bcq(q, scale, zp, 0, bits, g)


def test_uniform_one_bit_and_refine_from_uniform():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    one = group_view(bcq.uniform_as_bcq(w, 1, 16).dequantize(), 16)
    assert all(row.unique().numel() <= 2 for row in one.reshape(-1, 16))
    # BCQ refinement started from the uniform code keeps the offset and does not get worse
    u = bcq.uniform_as_bcq(w, 3, 16)
    r = bcq.refine(w, u)
    assert r.offset_f32 is not None
    assert (bcq.group_error(w, r) <= bcq.group_error(w, u)).all()


def test_pack_round_trip():
    f = bcq.fit(torch.randn(8, 64, generator=torch.Generator().manual_seed(6)), 3, 32)
    packed = bcq.pack_planes(f.planes_i8)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 8, 8)
    assert torch.equal(bcq.unpack_planes(packed), f.planes_i8)
    with pytest.raises(ConfigError, match="multiple of 8"):
        bcq.pack_planes(f.planes_i8[..., :12])


@pytest.mark.parametrize("bits", [0, 5, 9, 2.5, True, "3"])
def test_bad_bits(bits):
    with pytest.raises(ConfigError, match=r"bits must be an int in 1\.\.4"):
        bcq.fit(torch.randn(4, 8), bits)


@pytest.mark.parametrize("group", [3, 0, -8, 16, 2.0])
def test_bad_group(group):
    with pytest.raises(ConfigError, match=r"group=.* dividing the input dimension 8"):
        bcq.fit(torch.randn(4, 8), 2, group)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight(bad):
    w = torch.randn(4, 8)
    w[1, 2] = bad
    with pytest.raises(ConfigError, match="NaN or inf"):
        bcq.fit_greedy(w, 2)
    with pytest.raises(ConfigError, match="NaN or inf"):
        bcq.uniform_as_bcq(w, 2)


def test_bad_weight_and_importance():
    with pytest.raises(ConfigError, match="2-D float weight"):
        bcq.fit(torch.randn(8), 2)
    with pytest.raises(ConfigError, match="2-D float weight"):
        bcq.fit(torch.ones(4, 8, dtype=torch.int32), 2)
    with pytest.raises(ConfigError, match="does not broadcast"):
        bcq.fit(torch.randn(4, 8), 2, importance=torch.ones(5))
    with pytest.raises(ConfigError, match="finite and >= 0"):
        bcq.fit(torch.randn(4, 8), 2, importance=-torch.ones(8))
    w = torch.randn(4, 8)
    with pytest.raises(ConfigError, match="does not match the fit"):
        bcq.refine(torch.randn(4, 16), bcq.fit_greedy(w, 2))
    with pytest.raises(ConfigError, match="iters"):
        bcq.refine(w, bcq.fit_greedy(w, 2), iters=-1)


@pytest.mark.weights("minilm")
def test_minilm_refined_never_above_greedy_per_layer():
    """Every encoder linear of the real all-MiniLM-L6-v2 (36), group 128: the refined error is
    at or below the greedy one in every row-group, and lower in total for every layer."""
    from lowbit.models import load_minilm

    model, _ = load_minilm(quiet=True)
    linears = [(n, m.weight.detach()) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")]
    assert len(linears) == 36
    for bits in (2, 3, 4):
        total_g = total_r = total_w = 0.0
        for name, w in linears:
            greedy = bcq.fit_greedy(w, bits, 128)
            refined = bcq.refine(w, greedy)
            e_g, e_r = bcq.group_error(w, greedy), bcq.group_error(w, refined)
            assert (e_r <= e_g).all(), (bits, name)
            assert e_r.sum() < e_g.sum(), (bits, name)
            total_g, total_r = total_g + float(e_g.sum()), total_r + float(e_r.sum())
            total_w += float((w.float() ** 2).sum())
        print(f"MiniLM BCQ q={bits} g=128: relative error greedy {total_g / total_w:.4f}, "
              f"refined {total_r / total_w:.4f}")


def test_degenerate_groups_stay_finite():
    """All-zero / constant groups (every plane equal: singular Gram) and a group with zero
    importance go through the pseudo-inverse fallback and stay finite."""
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(9))
    w[0] = 0.0
    w[1, :16] = 0.25
    imp = torch.ones(4, 32)
    imp[2, 16:] = 0.0
    for offset in (False, True):
        f = bcq.fit(w, 3, 16, importance=imp, offset=offset)
        assert torch.isfinite(f.alpha_f32).all()
        torch.testing.assert_close(f.dequantize()[0], torch.zeros(32), **FP32_TOL)
        torch.testing.assert_close(f.dequantize()[1, :16], torch.full((16,), 0.25), **FP32_TOL)
