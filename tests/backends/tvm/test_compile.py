"""lowbit.compile end to end on a tiny BERT (hidden 64, 2 layers, batch 2, seq 16), untuned.

- float graph: TVM matches torch within FLOAT_ATOL (fast exp/erf polynomials and reassociated
  fp32 sums, measured ~1e-6 here);
- W8A8 (u8 x s8 -> s32 kernels of the host's instruction set, isa/): the integer module and
  the FX fake-quant graph, both ending in the same static u8 output quantizer, agree within one
  output step, and the fraction of elements one step apart stays below MAX_OFF_BY_ONE; the
  same for the module compiled for each instruction set's CPU (x86-64-v3 / AVX2, Skylake-X /
  AVX-512BW, Alder Lake / AVX-VNNI, Cascade Lake / AVX-512 VNNI) where this host can run it,
  and each of them at least builds with its kernels named in the lowering log;
- W4A16 (int4 group 32, dequant fused in the GEMM): within W4_ATOL of the FX graph;
- calling conventions and clear errors.
"""

import numpy as np
import pytest
import torch
import torch.ao.quantization.fx._decomposed

from lowbit import recipes
from lowbit.backends.tvm.kernels.isa import ISAS, example_target, host_runs, isa_of
from lowbit.backends.tvm.runtime import RuntimeInputError
from lowbit.backends.tvm.target import host_target, resolve_target
from lowbit.capture import capture
from lowbit.compiler import compile
from lowbit.config import PerGroup, QuantSpec
from lowbit.errors import ConfigError, LowbitError
from lowbit.quantize import quantize
from lowbit.testing import op_counts, quantize_outputs

FLOAT_ATOL = 1e-4
W4_ATOL = 1e-4   # same int4 values and scales; only fp32 summation order differs
OUT_SCALE, OUT_ZP = 0.03, 128
# An element moves one output step only when a value upstream sits within fp32 rounding
# (~1e-7 relative) of a rounding tie of some activation quantizer; on this model that is a
# <1e-3 event. 1% keeps headroom yet fails on any systematic error (wrong zero point,
# scale, packing), which moves most elements.
MAX_OFF_BY_ONE = 0.01
W4_G32 = recipes.W4A16_G128.replace(
    name="W4A16_G32", weight=QuantSpec(bits=4, symmetric=True, granularity=PerGroup(32)))

needs_int8 = pytest.mark.skipif(
    isa_of(host_target()) is None, reason="host without AVX2: no int8 kernels")


@pytest.fixture(scope="module")
def bert(tiny_bert):
    model, inputs, calib = tiny_bert
    return model, capture(model, inputs), inputs, calib


def _quantize_outputs(gm):
    return quantize_outputs(gm, OUT_SCALE, OUT_ZP)


@pytest.fixture(scope="module")
def float_mod(bert):
    return compile(bert[1], progress=False)


@pytest.fixture(scope="module")
def w8a8(bert):
    _, gm, _, calib = bert
    q = _quantize_outputs(quantize(gm, recipes.W8A8, calibration=calib, progress=False))
    return q, compile(q, progress=False) if isa_of(host_target()) is not None else None


def test_float_matches_torch(bert, float_mod):
    model, _, inputs, _ = bert
    mod = float_mod
    want = model(**inputs)
    got = mod(**inputs)
    assert mod.output_names == ["last_hidden_state", "pooler_output"]
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=0,
                               atol=FLOAT_ATOL)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=0, atol=FLOAT_ATOL)


def _agreement(q, mod, batches) -> float:
    """Fraction of output elements one output step apart (asserting none is further)."""
    total = off = 0
    for batch in batches:
        want = q(**batch)
        got = mod(**batch)
        for w, g in zip(want.values(), got):
            steps = ((g - w).abs() / OUT_SCALE).round()
            assert steps.max() <= 1, f"{int(steps.max())} output steps apart"
            total += steps.numel()
            off += int((steps == 1).sum())
    print(f"TVM vs FX: {off}/{total} elements one output step apart")
    return off / total


@needs_int8
def test_w8a8_integer_within_one_output_step(bert, w8a8):
    _, _, inputs, calib = bert
    q, mod = w8a8
    kinds = [k for _, k in mod.meta["lowering"]]
    assert kinds.count("linear_u8s8") == 10 and kinds.count("linear_u8s8_q") == 2  # FFN in
    assert _agreement(q, mod, [inputs, *calib]) <= MAX_OFF_BY_ONE


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name)
def test_w8a8_on_every_instruction_set(bert, w8a8, isa, capsys):
    """The same quantized graph compiled for each family's CPU: all 12 int8 linears on that
    family's kernels (named in the log); run and checked where this host can execute it."""
    _, _, inputs, calib = bert
    q = w8a8[0]
    target = example_target(isa)
    mod = compile(q, target=target)
    assert isa.family in capsys.readouterr().err and isa.family in mod.meta["kernel_family"]
    kinds = [k for _, k in mod.meta["lowering"]]
    assert sum(k.startswith("linear_u8s8") for k in kinds) == 12
    if host_runs(target):
        assert _agreement(q, mod, [inputs, *calib]) <= MAX_OFF_BY_ONE


def test_target_without_int8_names_the_reason(bert, w8a8, capsys):
    """A target with no int8 instruction set (baseline x86-64: SSE2 only) compiles the
    quantized graph with fp32 linears and says why, per linear and in the log."""
    mod = compile(w8a8[0], target="x86-64")
    assert mod.meta["kernel_family"] is None
    reasons = {k for _, k in mod.meta["lowering"]}
    assert all(r.startswith("fp32:") for r in reasons)
    assert any("no instruction set for int8 kernels" in r for r in reasons)
    assert "0 int8 linear(s)" in capsys.readouterr().err


@needs_int8
@pytest.mark.parametrize("recipe", [recipes.W8A8_FULL, recipes.W4A8], ids=lambda r: r.name)
def test_other_static_recipes_within_one_output_step(bert, recipe):
    """W8A8_FULL: o / FFN-out output quantizers become requantizing epilogues (u8 between
    kernels), residual quantizers stay fake-quant in fp32; W4A8: 4-bit per-channel weights are
    int8 values, so the u8 x s8 kernel runs them."""
    _, gm, inputs, calib = bert
    q = _quantize_outputs(quantize(gm, recipe, calibration=calib, progress=False))
    mod = compile(q, progress=False)
    kinds = [k for _, k in mod.meta["lowering"]]
    n_fused = 2 * 3 if recipe is recipes.W8A8_FULL else 2
    assert kinds.count("linear_u8s8_q") == n_fused
    assert kinds.count("linear_u8s8") == 12 - n_fused
    assert _agreement(q, mod, [inputs, *calib]) <= MAX_OFF_BY_ONE


def test_w4a16_matches_fx(bert):
    _, gm, inputs, _ = bert
    q = quantize(gm, W4_G32, progress=False)
    mod = compile(q, progress=False)
    assert [k for _, k in mod.meta["lowering"]].count("linear_w4a16") == 12
    want, got = q(**inputs), mod(**inputs)
    for w, g in zip(want.values(), got):
        torch.testing.assert_close(g, w, rtol=0, atol=W4_ATOL)


def test_calling_conventions(bert, float_mod):
    inputs, mod = bert[2], float_mod
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    by_name = mod(**inputs).last_hidden_state
    assert isinstance(by_name, torch.Tensor)
    positional = mod(ids.numpy(), mask.numpy())[0]
    assert isinstance(positional, np.ndarray)
    np.testing.assert_array_equal(positional, by_name.numpy())
    mixed = mod(ids.to(torch.int32), attention_mask=mask)[0]      # int32 ids are cast
    torch.testing.assert_close(mixed, by_name, rtol=0, atol=0)
    with pytest.raises(RuntimeInputError, match="compiled for"):
        mod(ids[:, :8], mask[:, :8])
    with pytest.raises(RuntimeInputError, match="missing input"):
        mod(ids)
    with pytest.raises(RuntimeInputError, match="unknown input"):
        mod(ids, mask, tokens=ids)


def test_errors(bert):
    gm = bert[1]
    with pytest.raises(ConfigError, match="unknown target"):
        compile(gm, target="gpu9000", progress=False)
    with pytest.raises(ConfigError, match="dicts"):
        compile(gm, target="llvm -mcpu=znver4", progress=False)
    with pytest.raises(ConfigError, match="not supported"):
        resolve_target({"kind": "opencl"})
    with pytest.raises(ConfigError, match="mcpu"):
        resolve_target({"kind": "llvm", "mcpu": "notacpu"})
    dyn = quantize(gm, recipes.W8A8_DYNAMIC, progress=False)
    with pytest.raises(LowbitError, match="per-token"):
        compile(dyn, progress=False)
    with pytest.raises(ConfigError, match="example_inputs"):
        compile(torch.nn.Linear(4, 4), progress=False)


@needs_int8
def test_user_graph_not_modified(w8a8):
    q, _ = w8a8          # compiled by the fixture
    c = op_counts(q)
    assert c["aten.linear.default"] == 13 and c["lowbit.linear_u8s8.default"] == 0
    assert not any(n.endswith("_w_vnni") for n, _ in q.named_buffers())
    assert not any(isinstance(p, torch.nn.Parameter) and p.dtype == torch.int8
                   for p in q.parameters())
