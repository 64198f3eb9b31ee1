"""lowbit.quant.tt: TT-SVD of weights (tensorly ranks, our error-budget sweep, size budgets),
merged halves, contraction programs (opt_einsum orders), TT-matrix embeddings, core QAT, and
the errors of ``lowbit.config.TT``.

Tolerances: EXACT_RTOL for a full-rank TT, whose reconstruction equals the weight in exact
arithmetic and differs by float64 SVD round-off cast to float32 cores (the issue's 1e-5;
measured ~3e-7); FP32_RTOL for two float32 contraction orders of the same cores (measured
~1e-7). Both are max |diff| / max |ref|.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.quant import tt

EXACT_RTOL = 1e-5
FP32_RTOL = 1e-5
INT8_REL_ERROR = 0.05   # |W_q - W_tt| / |W_tt| with int8 cores (measured 0.015-0.047 on MiniLM)


# The SVDs run in torch: on a loaded 2-core host two threads spin (~10x slower).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _w(out: int, inn: int, seed: int = 0, decay: bool = True) -> torch.Tensor:
    """A weight with a decaying spectrum (as trained weights have), seeded."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=g, dtype=torch.float64)
    if decay:
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        w = (u * (s * torch.exp(-torch.arange(len(s)) / 8.0))) @ vt
    return w.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def _frob(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


# ---- modes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, k, want", [(768, 2, (24, 32)), (3072, 2, (48, 64)),
                                        (64, 3, (4, 4, 4)), (97, 2, (97,)), (1, 2, (1,)),
                                        (30522, 3, (2, 3, 5087))])
def test_factorize(n, k, want):
    assert tt.factorize(n, k) == want
    assert math.prod(want) == n


def test_layer_modes_auto_and_anchor_dims():
    assert tt.layer_modes(TT(ranks=30), 768, 768, "q") == ((24, 32), (32, 24))   # the anchor's
    assert tt.layer_modes(TT(ranks=30), 768, 3072, "ffn") == ((24, 32), (64, 48))
    dims = ((32, 24), (48, 64))                                               # FFN [32,24,48,64]
    assert tt.layer_modes(TT(ranks=30, dims=dims), 768, 3072, "ffn") == dims


def test_dims_that_do_not_factor_the_shape_name_the_layer():
    with pytest.raises(ConfigError, match=r"enc\.q: TT\.dims in_modes \(24, 30\) multiply to "
                                          r"720, not the layer's 768 in features"):
        tt.layer_modes(TT(ranks=4, dims=((24, 30), (32, 24))), 768, 768, "enc.q")
    with pytest.raises(ConfigError, match=r"enc\.q: TT\.dims out_modes"):
        tt.layer_modes(TT(ranks=4, dims=((24, 32), (32, 25))), 768, 768, "enc.q")


def test_bad_ranks_name_the_layer_and_value():
    w = _w(24, 16)
    with pytest.raises(ConfigError, match=r"fc: TT\.ranks \(2, 2\) has 2 entries; .* 3 inner"):
        tt.tt_svd(w, (4, 4), (6, 4), ranks=(2, 2), where="fc")
    with pytest.raises(ConfigError, match=r"fc: TT\.ranks\[0\] = 5 exceeds .* \(4; limits "
                                          r"\[4, 16, 4\]\)"):
        tt.tt_svd(w, (4, 4), (6, 4), ranks=(5, 5, 4), where="fc")
    assert tt.tt_svd(w, (4, 4), (6, 4), ranks=1000).ranks == (1, 4, 16, 4, 1)   # an int: a cap


# ---- TT-SVD ----------------------------------------------------------------------------------
@pytest.mark.parametrize("out, inn, in_modes, out_modes", [
    (96, 64, (8, 8), (12, 8)), (64, 96, (4, 4, 6), (8, 8)), (32, 48, (48,), (4, 8)),
    (40, 36, (6, 6), (40,))])
def test_full_rank_reconstructs_exactly(out, inn, in_modes, out_modes):
    w = _w(out, inn, decay=False)
    fit = tt.tt_svd(w, in_modes, out_modes, ranks=10 ** 6)
    assert fit.ranks == (1, *tt.bond_limits(in_modes + out_modes), 1)
    assert _rel(fit.full(), w) <= EXACT_RTOL


def test_error_budget_is_met_with_fewer_ranks_for_looser_budgets():
    w = _w(96, 64, seed=1)
    fits = [tt.tt_svd(w, (8, 8), (12, 8), error=b) for b in (0.5, 0.2, 0.05, 0.01)]
    for budget, fit in zip((0.5, 0.2, 0.05, 0.01), fits):
        assert _frob(fit.full(), w) <= budget
    for looser, tighter in itertools.pairwise(fits):
        assert all(a <= b for a, b in zip(looser.ranks, tighter.ranks))
    assert fits[0].params < fits[-1].params


def test_error_sweep_matches_tensorly_at_its_ranks():
    """Our sweep (error budgets) and tensorly's (given ranks) are one algorithm."""
    w = _w(96, 64, seed=2)
    ours = tt.tt_svd(w, (8, 8), (12, 8), error=0.1)
    theirs = tt.tt_svd(w, (8, 8), (12, 8), ranks=ours.ranks[1:-1])
    assert theirs.ranks == ours.ranks
    assert _rel(ours.full(), theirs.full()) <= FP32_RTOL


def test_error_decreases_with_rank():
    w = _w(96, 64, seed=3)
    errs = [_frob(tt.tt_svd(w, (8, 8), (12, 8), ranks=r).full(), w) for r in (1, 2, 4, 8, 16, 32)]
    assert all(a >= b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.5 * errs[0]


def test_size_budget():
    w = _w(96, 64, seed=4)
    for size in (0.1, 0.3):
        fit = tt.tt_svd(w, (8, 8), (12, 8), size=size)
        assert fit.params <= size * w.numel() * 1.05, (size, fit.ranks, fit.params)


def test_anchor_bert_attention_shape():
    """768x768 as dims [24, 32, 32, 24], rank 30: the first and last bonds hold at most 24."""
    fit = tt.tt_svd(_w(768, 768, seed=5), (24, 32), (32, 24), ranks=30)
    assert fit.ranks == (1, 24, 30, 24, 1)
    assert fit.params == 24 * 24 + 24 * 32 * 30 * 2 + 24 * 24
    a, b = fit.halves()
    assert a.shape == (768, 30) and b.shape == (30, 768)
    assert fit.flops(128)["merged"] == 2 * 128 * 30 * (768 + 768)
    assert fit.nbytes(8) < fit.nbytes() / 3


def test_nan_weight_is_refused():
    w = _w(24, 16)
    w[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="fc: weight holds NaN"):
        tt.tt_svd(w, (4, 4), (6, 4), ranks=4, where="fc")


# ---- halves and programs ---------------------------------------------------------------------
def test_merged_halves_equal_the_full_contraction():
    import tensorly as tl

    fit = tt.tt_svd(_w(96, 64, seed=6), (4, 4, 4), (12, 8), ranks=6)
    a, b = fit.halves()
    full = tl.tt_to_tensor([c.double().numpy() for c in fit.cores]).reshape(64, 96)
    assert _rel(a @ b, torch.from_numpy(full).float()) <= FP32_RTOL
    assert a.shape == (64, fit.mid_rank) and b.shape == (fit.mid_rank, 96)


@pytest.mark.parametrize("form, rows", [("merged", 16), ("chain", 1), ("chain", 128)])
def test_programs_compute_x_w_t(form, rows):
    fit = tt.tt_svd(_w(96, 64, seed=7), (8, 8), (12, 8), ranks=8)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))
    steps = tt.program(fit, form, rows)
    y = tt.run_program(steps, {"x": x, **{f"core{k}": c for k, c in enumerate(fit.cores)}})
    assert y.shape == (2, 3, 96)
    assert _rel(y, x @ fit.full().t()) <= FP32_RTOL
    assert {s.op for s in steps} <= {"einsum", "reshape", "matmul", "unflatten", "flatten"}


def test_chain_order_follows_flops():
    """At one row x meets the first core first; at many rows the order is the merged halves'
    and costs what they do (built + applied)."""
    fit = tt.tt_svd(_w(768, 768, seed=5, decay=False), (24, 32), (32, 24), ranks=30)
    one = tt.program(fit, "chain", rows=1)
    assert one[1].inputs == ("core0", "x_modes")
    f1, f512 = fit.flops(1), fit.flops(512)
    assert f1["chain"] < f1["merged"] + f1["halves"]
    assert f512["chain"] == f512["merged"] + f512["halves"]
    assert f512["merged"] * 10 < f512["dense"]


# ---- embeddings (TT-matrix) ------------------------------------------------------------------
def test_embedding_tt_matrix():
    table = _w(1000, 64, seed=8, decay=False)
    rows, cols = tt.embedding_modes(1000, 64)
    assert math.prod(rows) >= 1000 and math.prod(cols) == 64
    full = tt.ttm_svd(table, rows, cols, ranks=10 ** 6)
    assert _rel(full.full(), table) <= EXACT_RTOL
    fit = tt.ttm_svd(table, rows, cols, error=0.3)
    assert _frob(fit.full(), table) <= 0.3 and fit.params < table.numel()
    ids = torch.tensor([[0, 17, 999], [5, 5, 640]])
    assert torch.allclose(fit.lookup(ids), fit.full()[ids], rtol=0, atol=1e-6)
    padded = tt.embedding_modes(30522, 768)            # BERT's vocabulary pads to 30752
    assert padded == ((31, 31, 32), (8, 8, 12))
    with pytest.raises(ConfigError, match="emb: TT-matrix modes"):
        tt.ttm_svd(table, (10, 10, 10), (4, 4, 5), ranks=4, where="emb")


# ---- QAT of the cores ------------------------------------------------------------------------
def _quantized(fit: tt.TTWeight, bits: int) -> tuple[list[tt.TTCoreQuant], list[torch.Tensor]]:
    d = len(fit.cores)
    quants = [tt.TTCoreQuant(c, bits, tt.core_axis(k, d)) for k, c in enumerate(fit.cores)]
    return quants, [q(c) for q, c in zip(quants, fit.cores)]


@pytest.mark.parametrize("bits, ceiling", [(8, INT8_REL_ERROR), (4, 0.6)])
def test_core_fake_quant_error(bits, ceiling):
    fit = tt.tt_svd(_w(96, 64, seed=9), (8, 8), (12, 8), ranks=8)
    _, cores = _quantized(fit, bits)
    a, b = fit.halves(cores)
    err = _frob((a @ b).t(), fit.full())
    assert 0 < err <= ceiling
    for q, c in zip(*_quantized(fit, bits)):
        codes, scale = q.integer(c)
        assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 2 ** (bits - 1) - 1
        assert scale.numel() == c.shape[q.axis]


def test_gradients_reach_cores_and_scales():
    fit = tt.tt_svd(_w(96, 64, seed=10), (8, 8), (12, 8), ranks=8)
    cores = [c.clone().requires_grad_(True) for c in fit.cores]
    quants = [tt.TTCoreQuant(c.detach(), 8, tt.core_axis(k, 4)) for k, c in enumerate(cores)]
    a, b = fit.halves([q(c) for q, c in zip(quants, cores)])
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    ((x @ a @ b) ** 2).mean().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in cores)
    assert all(q.scale.grad is not None and q.scale.grad.abs().sum() > 0 for q in quants)
    assert [tuple(q.scale.shape) for q in quants] == [(1, 1, 8)] * 3 + [(8, 1, 1)]


def test_lsq_gradient_scale():
    from lowbit.quant.numerics import scale_grad

    s = torch.tensor(2.0, requires_grad=True)
    y = scale_grad(s, 0.25)
    y.backward()
    assert float(y.detach()) == 2.0 and float(s.grad) == 0.25


# ---- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of ranks, error or size"),
    ({"ranks": 4, "error": 0.1}, "exactly one"),
    ({"ranks": 0}, "TT.ranks"),
    ({"ranks": (4, -1)}, "TT.ranks"),
    ({"ranks": True}, "TT.ranks"),
    ({"error": 1.5}, "TT.error"),
    ({"size": 0.0}, "TT.size"),
    ({"ranks": 4, "bits": 3}, r"TT.bits: must be None \(float cores\), 8 or 4, got 3"),
    ({"ranks": 4, "bits": 16}, "TT.bits"),
    ({"ranks": 4, "dims": (24, 32, 32, 24)}, r"TT.dims: must be \(in_modes, out_modes\)"),
    ({"ranks": 4, "dims": ((24, 0), (32,))}, "TT.dims"),
    ({"ranks": 4, "modes": 0}, "TT.modes"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TT(**kwargs)


def test_config_accepts_lists_and_reads_short():
    spec = TT(ranks=[30, 30, 30], dims=[[24, 32], [32, 24]], bits=8)
    assert spec.ranks == (30, 30, 30) and spec.dims == ((24, 32), (32, 24))
    assert spec.short() == "TT r(30, 30, 30) dims 24x32->32x24 int8"
    assert hash(spec) == hash(TT(ranks=(30, 30, 30), dims=((24, 32), (32, 24)), bits=8))
    assert np.isclose(TT(error=0.1).error, 0.1)


def test_step_shapes():
    fit = tt.tt_svd(_w(96, 64, seed=7), (8, 8), (12, 8), ranks=8)
    for form in tt.FORMS:
        env = {"x": torch.randn(2, 3, 64), **{f"core{k}": c for k, c in enumerate(fit.cores)}}
        shapes = {n: list(t.shape) for n, t in env.items()}
        for s in tt.program(fit, form, rows=6):
            tt.run_program([s], env)
            shapes[s.out] = tt.step_shape(s, [shapes[i] for i in s.inputs])
            assert shapes[s.out] == list(env[s.out].shape), s
