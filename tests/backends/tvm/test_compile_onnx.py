"""lowbit.compile on QDQ ONNX models (frontends/onnx.py): a tiny BERT (hidden 64, 2 layers,
batch 2, seq 16), untuned, against onnxruntime running the same file.

- lowbit W8A8 export (static u8 activations, s8 per-channel weights, a u8 q/dq appended to
  each output): the 12 encoder linears lower to ``linear_u8s8``; outputs agree with
  onnxruntime within one output step, and the fraction one step apart stays below
  MAX_OFF_BY_ONE (an element moves a step only when a value upstream sits within fp32
  rounding of a rounding tie of some quantizer; a wrong zero point, scale or packing moves
  most elements). Compiled from the path, a ModelProto and ``lowbit.load_onnx``'s result.
- float export: within FLOAT_ATOL of onnxruntime.
- onnxruntime's own quantize_static (QDQ) models lower too and equal onnxruntime's QDQ
  reference (optimization="disable") within FLOAT_ATOL; quantize_dynamic is refused.
- structure (which ops appear / vanish, parameters), and clear errors.
"""

import numpy as np
import onnx
import pytest

import lowbit
from lowbit import recipes
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.backends.tvm.frontends.onnx import import_onnx
from lowbit.errors import CompileError
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.target import host_target
from lowbit.config import PerGroup, QuantSpec
from lowbit.errors import ConfigError
from lowbit.testing import quantize_outputs

FLOAT_ATOL = 1e-4
OUT_SCALE, OUT_ZP = 0.03, 128
MAX_OFF_BY_ONE = 0.01
N_INT8 = 12  # q, k, v, o, FFN in, FFN out x 2 layers; the pooler is not quantized by W8A8

needs_int8 = pytest.mark.skipif(
    isa_of(host_target()) is None, reason="host without AVX2: no int8 kernels")


def _quantize_outputs(gm):
    return quantize_outputs(gm, OUT_SCALE, OUT_ZP)


@pytest.fixture(scope="module")
def bert(tmp_path_factory, tiny_bert):
    model, inputs, calib = tiny_bert
    gm = lowbit.capture(model, inputs)
    q = _quantize_outputs(quantize_w8a8(gm, calib))
    d = tmp_path_factory.mktemp("onnx")
    files = {"w8a8": lowbit.export_onnx(q, d / "w8a8.onnx"),
             "f32": lowbit.export_onnx(gm, d / "f32.onnx")}
    feeds = [{k: v.numpy() for k, v in b.items()} for b in [inputs, *calib]]
    return gm, files, feeds


def quantize_w8a8(gm, calib):
    return lowbit.quantize(gm, recipes.W8A8, calibration=calib, progress=False)


@pytest.fixture(scope="module")
def w8a8_mod(bert):
    return lowbit.compile(bert[1]["w8a8"], progress=False)


def _kinds(mod) -> list[str]:
    return [k for _, k in mod.meta["lowering"]]


def _agreement(path, mod, feeds) -> float:
    """Fraction of output elements one output step apart from onnxruntime (asserting none is
    further)."""
    ort = OrtRunner(path)
    total = off = 0
    for feed in feeds:
        for w, g in zip(ort(**feed), mod(**feed)):
            steps = np.round(np.abs(g - w) / OUT_SCALE)
            assert steps.max() <= 1, f"{int(steps.max())} output steps apart"
            total += steps.size
            off += int((steps == 1).sum())
    print(f"TVM vs onnxruntime: {off}/{total} elements one output step apart")
    return off / total


# ---- structure (import only: no build) ---------------------------------------------------------
def test_lowering_structure(bert):
    imp, log = import_onnx(bert[1]["w8a8"])
    assert [k for _, k in log].count("linear_u8s8") == N_INT8
    assert ("pooler.dense.weight", "fp32: weight not quantized") in log
    script = imp.mod.script()
    assert script.count("R.call_tir(cls.lowbit_linear_u8s8_") == N_INT8
    assert "R.dequantize(encoder" not in script            # no weight dequantize left
    main = imp.mod["main"]
    assert [str(p.name) for p in main.params[:2]] == imp.input_names == \
        ["input_ids", "attention_mask"]
    params = dict(zip((str(p.name) for p in main.params[2:]), imp.params))
    assert len(params) == len(imp.params)
    assert not any(n.endswith("weight_i8") for n in params)  # the [K, N] int8 weights are gone
    packed = [p for n, p in params.items() if n.endswith("_w_vnni")]
    assert len(packed) == N_INT8 and all(p.dtype == "int8" and p.shape[2:] == (16, 4)
                                         for p in packed)
    assert imp.output_names == [o.name for o in onnx.load(bert[1]["w8a8"]).graph.output]


def test_int8_disabled_leaves_float_qdq(bert):
    imp, log = import_onnx(bert[1]["w8a8"], int8=False)
    assert all(k.startswith("fp32") for _, k in log) and len(log) == N_INT8 + 1
    assert "call_tir" not in imp.mod.script()


# ---- numbers -----------------------------------------------------------------------------------
@needs_int8
def test_w8a8_onnx_within_one_output_step(bert, w8a8_mod):
    _, files, feeds = bert
    assert _kinds(w8a8_mod).count("linear_u8s8") == N_INT8
    assert w8a8_mod.input_names == ["input_ids", "attention_mask"]
    assert _agreement(files["w8a8"], w8a8_mod, feeds) <= MAX_OFF_BY_ONE


def test_w8a8_onnx_avx2_kernels_agree(bert, w8a8_mod):
    """The QDQ file compiled for an AVX2 CPU (exact vpmaddwd kernels, runnable on every host of
    this suite) gives the host-ISA module's outputs: the same integers, so only the fp32
    epilogues' rounding (FMA contraction, vector width) may differ (FLOAT_ATOL)."""
    from lowbit.backends.tvm.kernels.isa import host_runs
    from lowbit.backends.tvm.target import resolve_target

    _, files, feeds = bert
    mod = lowbit.compile(files["w8a8"], target="x86-64-v3", progress=False)
    assert mod.meta["kernel_family"].startswith("u8s8/avx2")
    assert _kinds(mod).count("linear_u8s8") == N_INT8
    if host_runs(resolve_target("x86-64-v3")):
        for feed in feeds:
            for w, g in zip(w8a8_mod(**feed), mod(**feed)):
                np.testing.assert_allclose(g, w, rtol=0, atol=FLOAT_ATOL)


@needs_int8
def test_modelproto_and_load_onnx_inputs(bert, w8a8_mod):
    _, files, feeds = bert
    proto = onnx.load(files["w8a8"])
    before = proto.SerializeToString()
    want = w8a8_mod(**feeds[0])
    for src in (proto, lowbit.load_onnx(files["w8a8"])):
        mod = lowbit.compile(src, progress=False)
        assert _kinds(mod).count("linear_u8s8") == N_INT8
        for w, g in zip(want, mod(**feeds[0])):
            np.testing.assert_array_equal(g, w)
    assert proto.SerializeToString() == before  # the caller's model is not modified


def test_float_onnx_matches_onnxruntime(bert):
    _, files, feeds = bert
    mod = lowbit.compile(files["f32"], progress=False)
    assert "linear_u8s8" not in _kinds(mod)
    ort = OrtRunner(files["f32"])
    for w, g in zip(ort(**feeds[0]), mod(**feeds[0])):
        np.testing.assert_allclose(g, w, rtol=0, atol=FLOAT_ATOL)


# ---- onnxruntime's own quantizers --------------------------------------------------------------
class _Reader:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


@needs_int8
@pytest.mark.parametrize("act,per_channel", [("u8", False), ("s8", True)])
def test_onnxruntime_quantize_static(bert, tmp_path, act, per_channel):
    """onnxruntime's QDQ quantizer: every MatMul and the pooler Gemm (transB) lower; results
    equal onnxruntime's QDQ math (optimization="disable") to fp32 rounding. onnxruntime's
    optimized int8 kernels ("all") themselves differ from that math on a few elements (seen:
    1.8% of the last hidden state, up to 0.028, with u8 activations), so they are not the
    reference here."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    _, files, feeds = bert
    path = tmp_path / f"ort_{act}.onnx"
    quantize_static(str(files["f32"]), str(path), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel)
    mod = lowbit.compile(path, progress=False)
    assert _kinds(mod).count("linear_u8s8") == N_INT8 + 1
    ort = OrtRunner(path, optimization="disable")
    for feed in feeds[:2]:
        for w, g in zip(ort(**feed), mod(**feed)):
            np.testing.assert_allclose(g, w, rtol=0, atol=FLOAT_ATOL)


def test_onnxruntime_quantize_dynamic_refused(bert, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp_path / "dyn.onnx"
    quantize_dynamic(str(bert[1]["f32"]), str(path), weight_type=QuantType.QInt8)
    with pytest.raises(CompileError, match="DynamicQuantizeLinear.*quantize statically"):
        lowbit.compile(path, progress=False)


# ---- errors and shapes -------------------------------------------------------------------------
def test_dynamic_shapes_need_example_inputs(bert, tmp_path):
    _, files, feeds = bert
    proto = onnx.load(files["f32"])
    for inp in proto.graph.input:
        for d, name in zip(inp.type.tensor_type.shape.dim, ("batch", "seq")):
            d.dim_param = name
    with pytest.raises(ConfigError, match=r"dynamic input shapes \(input_ids\['\?', '\?'\]"):
        lowbit.compile(proto, progress=False)
    imp, _ = import_onnx(proto, feeds[0])
    assert [[int(d) for d in p.ty.shape.values] for p in imp.mod["main"].params[:2]] == \
        [[2, 16], [2, 16]]
    imp, _ = import_onnx(proto, (feeds[0]["input_ids"], feeds[0]["attention_mask"]))
    with pytest.raises(ConfigError, match="missing"):
        import_onnx(proto, {"input_ids": feeds[0]["input_ids"]})


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00 this is not protobuf \xff" * 8)
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        lowbit.compile(bad, progress=False)
    with pytest.raises(ConfigError, match="no such file"):
        lowbit.compile(str(tmp_path / "missing.onnx"), progress=False)


def test_blocked_int4_refused(bert, tmp_path):
    gm = bert[0]
    w4 = recipes.W4A16_G128.replace(
        name="W4A16_G32", weight=QuantSpec(bits=4, symmetric=True, granularity=PerGroup(32)))
    path = lowbit.export_onnx(lowbit.quantize(gm, w4, progress=False), tmp_path / "w4.onnx")
    with pytest.raises(CompileError, match="blocked .*DequantizeLinear.*TVM 0.27"):
        lowbit.compile(path, progress=False)
