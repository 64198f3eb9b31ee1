"""capture(): graphs keep parameter names, never share storage with the user's model, and
models that cannot be exported get an error with torch's reason and what to try."""

import pytest
import torch

from lowbit.capture import capture
from lowbit.errors import CaptureError
from lowbit.testing import assert_equivalent


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.proj(x))


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x * 2
        return x


def test_names_traceable_and_storage_detached():
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(2, 8)
    gm = capture(m, (x,))
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert {"proj.weight", "proj.bias"} <= targets
    assert gm.get_parameter("proj.weight").data_ptr() != m.proj.weight.data_ptr()
    with torch.no_grad():
        gm.get_parameter("proj.weight").zero_()
    assert m.proj.weight.abs().sum() > 0  # the user's model is untouched
    assert gm.meta["lowbit_example_inputs"][0][0] is x


def test_matches_eager_and_dynamic_shapes():
    torch.manual_seed(0)
    m = Tiny().eval()
    gm = capture(m, (torch.randn(2, 8),), dynamic=True)
    x = torch.randn(5, 8)  # another batch size
    assert_equivalent(m, gm, (x,), rtol=1e-6, atol=1e-6)


def test_untraceable_model_explains():
    with pytest.raises(CaptureError) as e:
        capture(DataDependent(), (torch.randn(3),))
    msg = str(e.value)
    assert "torch.export could not capture DataDependent" in msg
    assert "torch.where/torch.cond" in msg  # what to try


def test_bad_arguments():
    with pytest.raises(CaptureError, match="takes a torch.nn.Module, got function"):
        capture(lambda x: x, (torch.randn(2),))
    with pytest.raises(CaptureError, match="example_inputs must be"):
        capture(Tiny(), 3)
