"""PEG activations in QDQ ONNX through lowbit.compile (lowering/peg.py, lowering/int8.py: the
numerics both frontends share): the tiny BERT of conftest.py (hidden 64, 2 layers, batch 2,
seq 16), exported float with static shapes, quantized with ``peg_recipe(groups=4)`` by the steps of
``lowbit.quantize_onnx`` minus its permutation folding (``_quantize``), untuned.

- numerics alone: ``contiguous_groups`` against a set-based reference, ``peg_corr_scale``
  against a loop reference and, through the kernel's numpy reference, against the float QDQ
  math it replaces; the refusals of ``plan_peg`` with their reasons.
- structure (import only): with ``permute=False`` every MatMul whose input is a per-axis
  activation DequantizeLinear (counted in the file) becomes ``linear_u8s8_peg`` with corr/scale
  [G, N], G the number of distinct (scale, zero point) pairs of that input; the per-tensor ones
  stay ``linear_u8s8``, the pooler fp32. An s8 copy of the PEG inputs plans the same arrays.
- numbers: the compiled module against onnxruntime running the same file (OrtRunner: QDQ
  fusion off for PEG files, so the QDQ math runs op by op). The outputs (last LayerNorm,
  pooler tanh) are not quantized, so the bound is FLOAT_ATOL: every quantizer sees the same
  integers on both sides and only fp32 rounding differs (integer accumulation vs dequantized
  fp32 GEMM; measured at most 4.8e-7 on these 5 batches); one intermediate integer moved by a
  step would shift the outputs by ~1e-2, far beyond it.
- ``permute=True`` (groups interleave, no permutation folded): those MatMuls stay float with
  the reason in the log, the rest lowers as before, and the output still agrees.
- ``permute=True`` through ``lowbit.quantize_onnx`` (the permutation folded by PegPermute):
  contiguous groups again, so every PEG input lowers to ``linear_u8s8_peg``, and it agrees.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.backends.tvm.frontends.onnx import import_onnx
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.kernels.peg import reference_linear_u8s8_peg
from lowbit.backends.tvm.lowering.int8 import contiguous_groups, peg_corr_scale
from lowbit.backends.tvm.lowering.pack import pack_vnni
from lowbit.backends.tvm.lowering.peg import PegArrays, plan_peg
from lowbit.backends.tvm.target import host_target
from lowbit.passes.onnx import (
    InsertQDQ,
    calibrate,
    find_transformer,
    load_onnx,
    plan_sites,
    save_onnx,
)
from lowbit.recipes import peg_recipe

K = 4                 # PEG groups asked of the recipe (the hidden size is 64)
FLOAT_ATOL = 1e-4     # module docstring
NOT_CONTIGUOUS = "not constant on contiguous channel groups"

needs_int8 = pytest.mark.skipif(
    isa_of(host_target()) is None, reason="host without AVX2: no int8 kernels")


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_bert):
    """The float export of the shared tiny BERT (conftest.py), quantized with PEG in place
    ("peg"), permuted ("perm"), "peg" with its PEG inputs moved to s8 ("s8"), and permuted
    through the whole ``quantize_onnx`` ("folded")."""
    model, inputs, calib = tiny_bert
    feeds = [{k: v.numpy() for k, v in b.items()} for b in [inputs, *calib]]
    d = tmp_path_factory.mktemp("onnx_peg")
    f32 = lowbit.export_onnx(lowbit.capture(model, inputs), d / "f32.onnx")
    out = {key: _quantize(f32, peg_recipe(groups=K, permute=permute), feeds[1:], d / f"{key}.onnx")
           for key, permute in (("peg", False), ("perm", True))}
    out["s8"] = _to_s8(out["peg"], d / "s8.onnx")
    out["folded"] = d / "folded.onnx"      # the whole quantize_onnx: permutation folded
    lowbit.quantize_onnx(f32, peg_recipe(groups=K, permute=True), calibration=feeds[1:],
                         out=out["folded"], progress=False)
    return out, feeds


def _quantize(path, recipe, batches, out):
    """``quantize_onnx``'s steps without its PEG permutation folding (plan, calibrate, insert
    QDQ): with ``permute=True`` the groups stay interleaved, the case the lowering must refuse;
    with ``permute=False`` there is nothing to fold."""
    model = load_onnx(path)
    plan = plan_sites(find_transformer(model), recipe)
    InsertQDQ(recipe, calibrate(model, plan.static(), batches, runner=OrtRunner,
                                progress=False))(model)
    save_onnx(model, out)
    return out


def _to_s8(path, out):
    """The PEG inputs' Q/DQ on the s8 grid: zero points z - 128 as INT8, so every integer is
    the u8 one minus 128 (saturation included) and the dequantized values are unchanged."""
    proto = onnx.load(path)
    zps = {dq.input[2] for dq in _per_axis_inputs(proto).values()}
    readers = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    for t in proto.graph.initializer:
        if t.name in zps:
            assert readers[t.name] <= {"QuantizeLinear", "DequantizeLinear"}
            z = numpy_helper.to_array(t).astype(np.int16) - 128
            t.CopyFrom(numpy_helper.from_array(z.astype(np.int8), t.name))
    onnx.save(proto, out)
    return out


def _per_axis_inputs(proto) -> dict:
    """weight name -> the per-axis activation DequantizeLinear feeding its MatMul, read from the
    file: the PEG linears."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    found = {}
    for n in g.node:
        if n.op_type != "MatMul":
            continue
        a, b = producer.get(n.input[0]), producer.get(n.input[1])
        if a is None or b is None or a.op_type != "DequantizeLinear" or \
                b.op_type != "DequantizeLinear" or b.input[0] not in inits:
            continue
        if a.input[1] in inits and np.prod(inits[a.input[1]].dims) > 1:
            found[b.input[0]] = a
    return found


def _distinct_groups(proto, dq) -> int:
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    pairs = np.stack([inits[dq.input[1]].astype(np.float64), inits[dq.input[2]].astype(np.float64)])
    return np.unique(pairs, axis=1).shape[1]


@pytest.fixture(scope="module")
def peg_mod(files):
    return lowbit.compile(files[0]["peg"], progress=False)


@pytest.fixture(scope="module")
def perm_mod(files):
    return lowbit.compile(files[0]["perm"], progress=False)


def _kinds(log) -> list[str]:
    return [k for _, k in log]


# ---- numerics alone ----------------------------------------------------------------------------
def _groups_reference(s, z) -> int | None:
    """Widest contiguous runs (a multiple of 4 channels, tiling K) on which (s, z) is one value."""
    k = len(s)
    for width in range(k, 0, -1):
        if k % width or width % 4:
            continue
        if all(len({(float(a), int(b)) for a, b in zip(s[i:i + width], z[i:i + width])}) == 1
               for i in range(0, k, width)):
            return k // width
    return None


@pytest.mark.parametrize("k,groups", [(64, 4), (64, 1), (96, 6), (48, 12), (24, 4), (64, 64)])
def test_contiguous_groups_matches_reference(k, groups):
    rng = np.random.default_rng(k + groups)
    s = np.repeat(rng.uniform(0.01, 0.1, groups).astype(np.float32), k // groups)
    z = np.repeat(rng.integers(0, 256, groups), k // groups)
    perm = rng.permutation(k)
    for s_, z_ in ((s, z), (s[perm], z[perm])):
        want = _groups_reference(s_, z_)
        assert contiguous_groups(s_, z_, k) == want
        assert contiguous_groups(torch.from_numpy(s_), torch.from_numpy(z_), k) == want
    assert contiguous_groups(s, z, k) == (groups if (k // groups) % 4 == 0 else None)
    z2 = z.copy()
    z2[: k // groups] = z[-1]   # first and last group share qparams: still G groups in place
    assert contiguous_groups(s, z2, k) == _groups_reference(s, z2)


def test_corr_scale_match_reference_and_float_qdq():
    """``peg_corr_scale`` = a loop over groups; with it the kernel's numpy reference computes
    ``dequant(x) @ dequant(W)^T + b`` up to fp32 rounding."""
    m, n, k, groups = 6, 32, 48, 3
    kg = k // groups
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    s_w = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    s_x = np.repeat(rng.uniform(0.01, 0.1, groups).astype(np.float32), kg)
    z_x = np.repeat(rng.integers(0, 256, groups), kg)
    x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.normal(size=n).astype(np.float32)
    corr, scale = peg_corr_scale(w, s_w, s_x, z_x, groups)
    assert corr.dtype == np.int32 and scale.dtype == np.float32 and corr.shape == (groups, n)
    for g in range(groups):
        c = slice(g * kg, (g + 1) * kg)
        np.testing.assert_array_equal(corr[g], z_x[c][0] * w[:, c].astype(np.int64).sum(1))
        np.testing.assert_array_equal(scale[g], (np.float64(s_x[c][0]) * s_w).astype(np.float32))
    y = reference_linear_u8s8_peg(x, pack_vnni(torch.from_numpy(w)).numpy(), corr, scale, b)
    want = ((x.astype(np.float64) - z_x) * s_x) @ (w.astype(np.float64) * s_w[:, None]).T + b
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # the ONNX planner ([K, N] weights) gives the same arrays
    plan = plan_peg(w.T.copy(), s_w, s_x, z_x, axis=-1, ndim=3)
    assert isinstance(plan, PegArrays) and plan.groups == groups
    np.testing.assert_array_equal(plan.corr_i32, corr)
    np.testing.assert_array_equal(plan.scale_f32, scale)


def test_plan_peg_refusals():
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (48, 32), dtype=np.int8)      # [K, N]
    s_w = np.full(32, 0.01, np.float32)
    s_x, z_x = np.repeat([0.1, 0.2, 0.3, 0.4], 12).astype(np.float32), np.repeat([1, 2, 3, 4], 12)
    assert isinstance(plan_peg(w, s_w, s_x, z_x, axis=2, ndim=3), PegArrays)
    assert "not the last" in plan_peg(w, s_w, s_x, z_x, axis=1, ndim=3)
    assert "not K=48" in plan_peg(w, s_w, s_x[:40], z_x[:40], axis=-1, ndim=3)
    perm = rng.permutation(48)
    assert NOT_CONTIGUOUS in plan_peg(w, s_w, s_x[perm], z_x[perm], axis=-1, ndim=3)
    s6, z6 = np.repeat(np.arange(1, 9) / 100, 6).astype(np.float32), np.repeat(np.arange(8), 6)
    assert "groups of 6 channel(s)" in plan_peg(w, s_w, s6, z6, axis=-1, ndim=3)
    assert "N=24 not a multiple of 16" in plan_peg(w[:, :24], s_w[:24], s_x, z_x, axis=-1,
                                                   ndim=3)


# ---- structure (import only: no build) ---------------------------------------------------------
def test_lowering_structure(files):
    path = files[0]["peg"]
    proto = onnx.load(path)
    peg = _per_axis_inputs(proto)
    assert peg                                   # the FFN inputs of the recipe
    imp, log = import_onnx(path)
    kinds = dict(log)
    assert {n for n, k in log if k == "linear_u8s8_peg"} == set(peg)
    # every other quantized MatMul as before (per-tensor W8A8), the pooler Gemm stays fp32
    w8 = [n for n, k in log if n not in peg and k != "fp32: weight not quantized"]
    assert w8 and all(kinds[n] == "linear_u8s8" for n in w8)
    assert kinds["pooler.dense.weight"] == "fp32: weight not quantized"
    script = imp.mod.script()
    assert script.count("R.call_tir(cls.lowbit_linear_u8s8_peg_") == len(peg)
    params = dict(zip((str(p.name) for p in imp.mod["main"].params[2:]), imp.params))
    for name, dq in peg.items():
        n = params[f"{name}_bias_f32"].shape[0]
        groups = _distinct_groups(proto, dq)
        assert params[f"{name}_corr_i32"].shape == params[f"{name}_scale_f32"].shape == (groups, n)
        assert f"R.call_tir(cls.lowbit_linear_u8s8_peg_32_{n}_64_{groups}," in script
        assert f"R.dequantize({name}" not in script
    assert not any(n in params for n in peg)     # the [K, N] int8 weights are gone


def test_s8_inputs_plan_the_same_arrays(files):
    """``x_s8 + 128``, ``z + 128``: the s8 file's kernel arrays equal the u8 file's."""
    u8, s8 = (import_onnx(files[0][k]) for k in ("peg", "s8"))
    assert _kinds(u8[1]) == _kinds(s8[1])
    arrays = []
    for imp, _ in (u8, s8):
        main = imp.mod["main"]
        arrays.append({str(p.name): v.numpy() for p, v in zip(main.params[2:], imp.params)
                       if str(p.name).endswith(("_corr_i32", "_scale_f32", "_w_vnni"))})
    assert arrays[0].keys() == arrays[1].keys() and any("corr" in n for n in arrays[0])
    for name, value in arrays[0].items():
        np.testing.assert_array_equal(arrays[1][name], value, err_msg=name)
    assert s8[0].mod.script().count("R.const(128, \"int32\")") >= len(_per_axis_inputs(
        onnx.load(files[0]["s8"])))


# ---- numbers -----------------------------------------------------------------------------------
@needs_int8
def test_peg_onnx_agrees_with_onnxruntime(files, peg_mod, agrees_with_onnxruntime):
    paths, feeds = files
    peg = _per_axis_inputs(onnx.load(paths["peg"], load_external_data=False))
    assert _kinds(peg_mod.meta["lowering"]).count("linear_u8s8_peg") == len(peg)
    agrees_with_onnxruntime(paths["peg"], peg_mod, feeds, FLOAT_ATOL)


@needs_int8
def test_permuted_peg_stays_float_and_agrees(files, perm_mod, peg_mod,
                                            agrees_with_onnxruntime):
    paths, feeds = files
    peg = _per_axis_inputs(onnx.load(paths["perm"], load_external_data=False))
    kinds = dict(perm_mod.meta["lowering"])
    assert peg and all(NOT_CONTIGUOUS in kinds[n] and "permute" in kinds[n] for n in peg)
    assert "linear_u8s8_peg" not in kinds.values()
    others = {n: k for n, k in peg_mod.meta["lowering"] if n not in peg}
    assert {n: kinds[n] for n in others} == others    # the rest lowers as in the plain file
    agrees_with_onnxruntime(paths["perm"], perm_mod, feeds, FLOAT_ATOL)


@needs_int8
def test_folded_permutation_lowers_to_peg_kernels(files, agrees_with_onnxruntime):
    paths, feeds = files
    peg = _per_axis_inputs(onnx.load(paths["folded"], load_external_data=False))
    mod = lowbit.compile(paths["folded"], progress=False)
    kinds = dict(mod.meta["lowering"])
    assert peg and all(kinds[n] == "linear_u8s8_peg" for n in peg), kinds
    agrees_with_onnxruntime(paths["folded"], mod, feeds, FLOAT_ATOL)
