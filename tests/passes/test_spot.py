"""One spotter for both IRs: ``lowbit.find_transformer`` on a model captured as FX and on the
same model exported as ONNX gives the same roles, names and shapes; and the views it runs on
read and write parameters alike."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
from lowbit.errors import PatternError
from lowbit.passes.view import view_of

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "onnx"))
import onnx_test_models as M  # shared with tests/passes/onnx (the path above)


def _np(x) -> np.ndarray:
    return x.detach().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def _roles(tm) -> list[tuple]:
    out = [(e.role, e.name) for e in tm.embeddings]
    out += [(role, ref.name) for role, ref in tm.norms()]
    return out + [(role, ref.name, ref.in_features, ref.out_features) for role, ref in tm.linears()]


@pytest.mark.parametrize("name, make", [("gpt2", "tiny_gpt2"), ("llama", "tiny_llama")])
def test_fx_and_onnx_give_the_same_roles(name, make):
    fx_tm = lowbit.find_transformer(lowbit.capture(getattr(M, make)(), M.inputs()))
    onnx_tm = lowbit.find_transformer(lowbit.load_onnx(M.onnx_file(name)))
    assert (fx_tm.ir, onnx_tm.ir) == ("fx", "onnx")
    assert _roles(onnx_tm) == _roles(fx_tm) and len(_roles(fx_tm)) > 10
    assert onnx_tm.roles_present() == fx_tm.roles_present()
    assert M.summary(onnx_tm) == M.summary(fx_tm)
    assert onnx_tm.unclassified == [] == fx_tm.unclassified


def test_anything_else_is_refused_by_type():
    with pytest.raises(PatternError, match="GraphModule.*onnx_ir.Model.*got Linear"):
        lowbit.find_transformer(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("ir_kind", ["fx", "onnx"])
def test_view_reads_and_writes_parameters(ir_kind):
    """``param`` / ``set_param`` / ``param_readers`` / ``aliases`` on the q projection of the
    tiny Llama, in either IR: what scale folding and PEG permutation will be written over."""
    graph = (lowbit.capture(M.tiny_llama(), M.inputs()) if ir_kind == "fx"
             else lowbit.load_onnx(M.onnx_file("llama")))
    q = lowbit.find_transformer(graph).blocks[0].attn.q
    view = view_of(graph)
    w = view.param(q.weight)
    assert tuple(w.shape) == ((q.out_features, q.in_features) if q.weight_layout == "out_in"
                              else (q.in_features, q.out_features))
    assert q.node in view.param_readers(q.weight) and view.aliases(q.weight) == [q.weight]
    doubled = _np(w) * 2
    view.set_param(q.weight, doubled)
    np.testing.assert_array_equal(_np(view.param(q.weight)), doubled)
    assert view.op(q.node) in ("matmul", None) and view.shape(view.linear_out(q))[-1] == \
        q.out_features
