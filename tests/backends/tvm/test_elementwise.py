"""``pow`` with a small integer exponent is imported as multiplies (lowering/elementwise.py):
TVM's CUDA ``power`` returns NaN for a negative base (Gemma's RMSNorm squares its input)."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit.backends.tvm.frontends.fx import import_graph


class Norm(torch.nn.Module):
    def __init__(self, e):
        super().__init__()
        self.e = e

    def forward(self, x):
        return x * torch.rsqrt(x.pow(self.e).mean(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("e, power_left", [(2, False), (3, False), (0.5, False), (2.5, True)])
def test_small_powers_become_multiplies(e, power_left):
    x = -torch.rand(2, 8, 16) - 0.1 if float(e).is_integer() else torch.rand(2, 8, 16) + 0.1
    gm = lowbit.capture(Norm(e), (x,))
    script = import_graph(gm, ((x,), {})).mod.script()
    assert ("R.power" in script) == power_left, script
    got = np.asarray(lowbit.compile(gm, target="cpu", progress=False)(x.numpy()))
    np.testing.assert_allclose(got, Norm(e)(x).numpy(), rtol=1e-5, atol=1e-6)


def test_onnx_pow_becomes_multiplies(tmp_path):
    from lowbit.backends.tvm.frontends.onnx import import_onnx

    x = -torch.rand(2, 8, 16) - 0.1
    path = lowbit.export_onnx(lowbit.capture(Norm(2), (x,)), tmp_path / "norm.onnx")
    import onnx

    assert any(n.op_type == "Pow" for n in onnx.load(str(path)).graph.node)
    imported, _ = import_onnx(str(path))
    assert "R.power" not in imported.mod.script()
    got = np.asarray(lowbit.compile(str(path), example_inputs=(x,), target="cpu",
                                    progress=False)(x.numpy()))
    np.testing.assert_allclose(got, Norm(2)(x).numpy(), rtol=1e-5, atol=1e-6)
