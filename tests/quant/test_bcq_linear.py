"""lowbit::bcq_linear: the reference op (W' rebuilt from packed planes), its autograd (alphas,
offset, bias, input; never the planes), torch.export keeping it whole, and operand checks."""

from __future__ import annotations

import pytest
import torch

from lowbit.quant import bcq
from lowbit.quant.bcq_linear import BCQ_LINEAR, bcq_linear, bcq_weight

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}   # float32 round-off of a few-term einsum + GEMM


def _fit(n=24, k=64, bits=3, group=16, offset=True, seed=0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return bcq.fit(w, bits, group, iters=3, offset=offset)


@pytest.mark.parametrize("offset", [True, False])
def test_forward_matches_dequantized_linear(offset):
    f = _fit(offset=offset)
    planes = bcq.pack_planes(f.planes_i8)
    assert torch.allclose(bcq_weight(planes, f.alpha_f32, f.offset_f32), f.dequantize(),
                          **FP32_TOL)
    x, b = torch.randn(2, 5, 64), torch.randn(24)
    y = bcq_linear(x, planes, f.alpha_f32, f.offset_f32, b)
    assert torch.allclose(y, torch.nn.functional.linear(x, f.dequantize(), b), **FP32_TOL)


def test_autograd_matches_finite_differences():
    f = _fit()
    planes = bcq.pack_planes(f.planes_i8)
    x = torch.randn(2, 3, 64, dtype=torch.float64, requires_grad=True)
    a = f.alpha_f32.double().requires_grad_()
    o = f.offset_f32.double().requires_grad_()
    b = torch.randn(24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: bcq_linear(t[0], planes, *t[1:]), (x, a, o, b))
    assert torch.autograd.gradcheck(lambda x_, a_: bcq_linear(x_, planes, a_, None, None), (x, a))


def test_only_requested_grads_and_planes_untouched():
    f = _fit(offset=False)
    planes = bcq.pack_planes(f.planes_i8)
    before = planes.clone()
    alpha = f.alpha_f32.clone().requires_grad_()
    bcq_linear(torch.randn(4, 64), planes, alpha, None, None).square().sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert torch.equal(planes, before)


def test_export_keeps_one_node():
    f = _fit()

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("planes", bcq.pack_planes(f.planes_i8))
            self.alpha = torch.nn.Parameter(f.alpha_f32)
            self.offset = torch.nn.Parameter(f.offset_f32)

        def forward(self, x):
            return bcq_linear(x, self.planes, self.alpha, self.offset, None)

    ep = torch.export.export(M(), (torch.randn(2, 64),))
    assert [n.target for n in ep.graph.nodes if n.op == "call_function"] == [BCQ_LINEAR]


@pytest.mark.parametrize("bad, match", [
    (lambda p, a, o: (p.to(torch.int8), a, o), "uint8"),
    (lambda p, a, o: (p, a[:, :, :2], o), "alpha must be"),
    (lambda p, a, o: (p, a[:, :3], o[:, :3]), "do not divide"),
    (lambda p, a, o: (p, a, o[:, :2]), "offset must be"),
])
def test_bad_operands_name_the_mismatch(bad, match):
    f = _fit()
    planes, alpha, offset = bad(bcq.pack_planes(f.planes_i8), f.alpha_f32, f.offset_f32)
    with pytest.raises(ValueError, match=match):
        bcq_linear(torch.randn(2, 64), planes, alpha, offset, None)
    with pytest.raises(ValueError, match="input has 32 features"):
        bcq_linear(torch.randn(2, 32), bcq.pack_planes(f.planes_i8), f.alpha_f32, None, None)
