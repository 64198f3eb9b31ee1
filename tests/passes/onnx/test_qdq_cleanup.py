"""The QDQ clean-up passes (``lowbit.passes.onnx.qdq_cleanup``) on a hand-made graph.

``x[2, 16] @ Transpose(DequantizeLinear(W_i8[8, 16], s[8], z[8], axis=0))``, the form the
exporter writes for ``linear`` with a per-channel weight on the restricted int4 grid [-7, 7]:

- structure: FoldWeightTransposes removes the Transpose (the weight is stored transposed, the
  axis moves to 1), PackInt4Weights stores the weight and its zero point as INT4; each is
  idempotent, and a graph without a 4-bit grid is left alone;
- numbers: onnxruntime gives bit-identical outputs before and after (integers move, no value
  changes), op by op (``optimization="disable"``) so no integer kernel is involved.
"""

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.passes.onnx.qdq_cleanup import (
    QDQ_CLEANUP,
    FoldDQParamCasts,
    FoldWeightTransposes,
    PackInt4Weights,
)
from lowbit.passes.onnx.qdq_ops import QMAX_KEY, QMIN_KEY
from lowbit.testing import assert_idempotent, assert_untouched, op_counts

N, K = 8, 16


def _model(qmin: int = -7, qmax: int = 7) -> ir.Model:
    rng = np.random.default_rng(0)
    w = rng.integers(qmin, qmax + 1, (N, K)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w_i8"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, N).astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zero_point")]
    dq = helper.make_node("DequantizeLinear", ["w_i8", "w_scale", "w_zero_point"], ["w"],
                          axis=0, name="dq")
    dq.metadata_props.add(key=QMIN_KEY, value=str(qmin))
    dq.metadata_props.add(key=QMAX_KEY, value=str(qmax))
    nodes = [dq, helper.make_node("Transpose", ["w"], ["w_t"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["x", "w_t"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [2, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, N])],
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _run(model: ir.Model) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
    return OrtRunner(ir.to_proto(model), optimization="disable").run({"x": x})[0]


def test_fold_transpose_then_pack_int4_structure_and_numbers():
    model = _model()
    assert op_counts(model)["Transpose"] == 1
    folded = assert_idempotent(FoldWeightTransposes(), model)
    assert op_counts(folded)["Transpose"] == 0
    dq = next(n for n in folded.graph if n.op_type == "DequantizeLinear")
    assert dq.attributes.get_int("axis") == 1 and dq.inputs[0].shape.dims == (K, N)
    packed = assert_idempotent(PackInt4Weights(), folded)
    dq = next(n for n in packed.graph if n.op_type == "DequantizeLinear")
    assert dq.inputs[0].dtype == ir.DataType.INT4 and dq.inputs[2].dtype == ir.DataType.INT4
    np.testing.assert_array_equal(_run(packed), _run(model))


def test_cleanup_sequence_reports_counts():
    model = _model()
    counts = [p(model).count for p in QDQ_CLEANUP]
    assert counts == [0, 1, 1]          # no Cast to fold; one Transpose; one weight packed
    assert not any(p(model).modified for p in QDQ_CLEANUP)


def test_full_int8_grid_is_left_alone():
    model = _model(-128, 127)           # does not fit 4 bits: stays INT8
    assert_untouched(PackInt4Weights(), model)
    assert_untouched(FoldDQParamCasts(), model)
