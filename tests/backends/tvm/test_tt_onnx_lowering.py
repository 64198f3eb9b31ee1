"""lowbit.compile on a QDQ ONNX model whose linears are materialized tensor-train halves, quantized
on the ONNX route: the tiny BERT of conftest.py (hidden 64, 2 layers, batch 2, seq 16) exported
float, ``lowbit.tensor_train(..., TT(ranks=8), materialize=True)`` on the ONNX file (12 layers,
24 MatMuls), ``lowbit.quantize(..., W8A8)`` (both halves of each layer: ``quantize_tt``),
compiled untuned for the host CPU.

- structure: every half lowers to ``linear_u8s8`` (u8 activations, s8 weights: the rank-r
  intermediate is requantized between the two GEMMs), the pooler stays fp32 (W8A8 has no head).
- numbers: the compiled module against onnxruntime running the same file, within FLOAT_ATOL
  as tests/backends/tvm/test_onnx_peg.py: the outputs (last LayerNorm, pooler tanh) are float,
  every quantizer sees the same integers on both sides and only fp32 rounding differs
  (measured at most 7.2e-7 on these 5 batches); one intermediate integer a step off would move
  the outputs by far more.
"""

import pytest

import lowbit
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.target import host_target
from lowbit.config import TT

FLOAT_ATOL = 1e-4     # module docstring
N_HALVES = 24         # q, k, v, o, FFN in, FFN out x 2 layers, two halves each

needs_int8 = pytest.mark.skipif(
    isa_of(host_target()) is None, reason="host without AVX2: no int8 kernels")


@pytest.fixture(scope="module")
def tt_qdq(tmp_path_factory, tiny_bert):
    model, inputs, calib = tiny_bert
    feeds = [{k: v.numpy() for k, v in b.items()} for b in [inputs, *calib]]
    d = tmp_path_factory.mktemp("tt_onnx")
    f32 = lowbit.export_onnx(lowbit.capture(model, inputs), d / "f32.onnx")
    lowbit.tensor_train(f32, TT(ranks=8), materialize=True, out=d / "tt.onnx", progress=False)
    lowbit.quantize(d / "tt.onnx", lowbit.recipes.W8A8, calibration=feeds[1:], out=d / "q.onnx",
                    progress=False)
    return d / "q.onnx", feeds


@needs_int8
def test_both_halves_lower_to_u8s8_and_agree_with_onnxruntime(tt_qdq, agrees_with_onnxruntime):
    path, feeds = tt_qdq
    mod = lowbit.compile(path, progress=False)
    log = dict(mod.meta["lowering"])           # weight initializer -> kernel (or fp32: why)
    halves = {w: kind for w, kind in log.items() if ".tt_" in w}
    assert len(halves) == N_HALVES, log
    assert set(halves.values()) == {"linear_u8s8"}, halves
    assert log["pooler.dense.weight"].startswith("fp32")
    agrees_with_onnxruntime(path, mod, feeds, FLOAT_ATOL)
