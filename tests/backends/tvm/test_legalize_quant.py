"""LegalizeQuantLinear on tiny quantized BERTs: structure (which ops appear and vanish, honest
``modified``, idempotence, a float graph left alone, reasons recorded) and numbers (the rewritten
graph, run eagerly with the ops' exact integer references, against the q/dq graph)."""

import copy

import pytest
import torch

from lowbit import recipes
from lowbit.backends.tvm.lowering.legalize import LOWERING_META, LegalizeQuantLinear
from lowbit.capture import capture
from lowbit.config import PerGroup, QuantSpec
from lowbit.quantize import quantize
from lowbit.testing import assert_idempotent, assert_untouched, op_counts

QD = "quantized_decomposed."
U8S8, W4A16 = "lowbit.linear_u8s8.default", "lowbit.linear_w4a16.default"
U8S8_Q = "lowbit.linear_u8s8_q.default"
N_LINEAR = 2 * 6  # q, k, v, o, ffn in, ffn out per block; the pooler stays float
# The eager integer ops accumulate exactly; the q/dq graph sums fp32 products. Outputs agree
# to fp32 reassociation (~1e-6 of values ~3) unless a rounding tie flips an activation step.
ATOL = 1e-4
W4_G32 = recipes.W4A16_G128.replace(
    name="W4A16_G32", weight=QuantSpec(bits=4, symmetric=True, granularity=PerGroup(32)))
W8A8_S8 = recipes.W8A8.replace(
    name="W8A8_S8", activation=QuantSpec(bits=8, symmetric=True))  # int8 activations


@pytest.fixture(scope="module")
def bert(tiny_bert):
    model, inputs, _ = tiny_bert
    return capture(model, inputs), inputs


def _quantized(bert, recipe):
    gm, inputs = bert
    return quantize(gm, recipe, calibration=[inputs], progress=False), inputs


# n_q: quantize_per_tensor left: one per input quantizer (4 per block) but the FFN-out input's,
# which FFN-in's requantizing epilogue absorbs (with GELU); for s8 activations the shifted u8
# copy replaces the original (unused, so dead-code eliminated). W8A8_FULL also fuses the o and
# FFN-out output quantizers; its residual quantizers stay.
# n_dq: dequantize_per_tensor left: W8A8_FULL's o / FFN-out outputs and the two residual sums
@pytest.mark.parametrize("recipe,op,n_q,n_fused,n_dq", [(recipes.W8A8, U8S8, 2 * 3, 2, 0),
                                                        (W8A8_S8, U8S8, 2 * 3, 2, 0),
                                                        (recipes.W8A8_FULL, U8S8, 2 * 5, 2 * 3,
                                                         2 * 4),
                                                        (W4_G32, W4A16, 0, 0, 0)])
def test_structure_and_numbers(bert, recipe, op, n_q, n_fused, n_dq):
    q, inputs = _quantized(bert, recipe)
    lowered = copy.deepcopy(q)
    res = LegalizeQuantLinear()(lowered)
    assert res.modified
    c = op_counts(lowered)
    assert c[op] == N_LINEAR - n_fused
    assert c[U8S8_Q] == n_fused
    if n_fused:
        assert c["aten.gelu.default"] == 0                       # inside FFN-in's epilogue
    assert c["aten.linear.default"] == 1                        # the pooler
    assert c[QD + "dequantize_per_channel.default"] == 0
    assert c[QD + "dequantize_per_channel_group.default"] == 0
    assert c[QD + "dequantize_per_tensor.default"] == n_dq      # the rest fed a linear
    assert c[QD + "quantize_per_tensor.default"] == n_q
    kinds = [k for _, k in lowered.meta[LOWERING_META]]
    assert kinds.count(op.split(".")[1]) == N_LINEAR - n_fused
    assert kinds.count("linear_u8s8_q") == n_fused
    assert kinds.count("fp32: weight not quantized") == 1
    want = q(**inputs)
    got = lowered(**inputs)
    for w, g in zip(want.values(), got.values()):
        torch.testing.assert_close(g, w, rtol=0, atol=ATOL)


def test_idempotent_and_float_graph_untouched(bert):
    q, _ = _quantized(bert, recipes.W8A8)
    assert_idempotent(LegalizeQuantLinear(), q)
    assert_untouched(LegalizeQuantLinear(), bert[0])


def test_options_and_reasons(bert):
    q, _ = _quantized(bert, recipes.W8A8)
    lowered = copy.deepcopy(q)
    assert not LegalizeQuantLinear(int8=False)(lowered).modified
    reasons = {why for _, why in lowered.meta[LOWERING_META]}
    assert reasons == {"fp32: int8 disabled", "fp32: weight not quantized"}


@pytest.mark.parametrize("spec,why", [
    (QuantSpec(bits=8, symmetric=True, granularity=PerGroup(32)),
     "fp32: group-32 weight of 8 bits [-127, 127]: the group kernel takes 4-bit weights only"),
    (QuantSpec(bits=4, symmetric=False, granularity=PerGroup(32)),
     "fp32: group-32 4-bit weight with a zero point [0, 15] (the kernel is symmetric)")])
def test_group_weights_the_kernel_cannot_take_say_why(bert, spec, why):
    """An 8-bit or asymmetric group weight stays fp32 with a reason naming what it is."""
    q, _ = _quantized(bert, W4_G32.replace(name="G", weight=spec))
    lowered = copy.deepcopy(q)
    LegalizeQuantLinear()(lowered)
    reasons = [r for _, r in lowered.meta[LOWERING_META]]
    assert reasons.count(why) == N_LINEAR, sorted(set(reasons))


def test_weight_buffers_replaced_by_packed_ones(bert):
    q, _ = _quantized(bert, recipes.W8A8)
    lowered = copy.deepcopy(q)
    LegalizeQuantLinear()(lowered)
    names = dict(lowered.named_buffers())
    assert not any(n.endswith("weight_i8") for n in names)
    packed = [b for n, b in names.items() if n.endswith("_w_vnni")]
    assert len(packed) == N_LINEAR
    assert all(b.dtype == torch.int8 and b.shape[2:] == (16, 4) for b in packed)


def test_requant_off_keeps_quantizers(bert):
    q, _ = _quantized(bert, recipes.W8A8)
    lowered = copy.deepcopy(q)
    LegalizeQuantLinear(requant=False)(lowered)
    c = op_counts(lowered)
    assert c[U8S8_Q] == 0 and c[U8S8] == N_LINEAR
    assert c["aten.gelu.default"] == 2


def test_sibling_linears_fused_exactly(bert):
    """q, k and v read one u8 tensor: one wide int8 GEMM, split, same numbers as before."""
    from lowbit.backends.tvm.lowering.fuse_siblings import FUSED_META, FuseSiblingLinears

    q, inputs = _quantized(bert, recipes.W8A8)
    lowered = copy.deepcopy(q)
    LegalizeQuantLinear()(lowered)
    fused = copy.deepcopy(lowered)
    assert FuseSiblingLinears()(fused).modified
    assert op_counts(fused)[U8S8] == op_counts(lowered)[U8S8] - 2 * 2   # 3 -> 1 per block
    assert [len(g) for g in fused.meta[FUSED_META]] == [3, 3]
    for w, g in zip(lowered(**inputs).values(), fused(**inputs).values()):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert_idempotent(FuseSiblingLinears(), fused)


@pytest.fixture(scope="module")
def gpt2():
    """A tiny GPT-2 (hidden 64, 2 layers): its Conv1D linears are addmm(b, x, W[K, N])."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                       n_positions=32, bos_token_id=0, eos_token_id=0)).eval()
    calib = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(3)]
    return capture(model, calib[0]), calib


def test_conv1d_addmm_takes_the_int8_kernel(gpt2):
    """GPT-2's addmm linears (weight [K, N], channels on axis 1) take the same u8s8 kernel as
    aten.linear, the weight transposed once; the lowered graph equals the fake-quant one."""
    gm, calib = gpt2
    q = quantize(gm, recipes.W8A8, calibration=calib, progress=False)
    lowered = copy.deepcopy(q)
    assert LegalizeQuantLinear()(lowered).modified
    kinds = dict(lowered.meta[LOWERING_META])
    addmms = [n for n in kinds if n.startswith("addmm")]
    assert len(addmms) == 2 * 4                      # c_attn, c_proj, c_fc, mlp c_proj
    assert all(kinds[n] in ("linear_u8s8", "linear_u8s8_q") for n in addmms), kinds
    assert op_counts(lowered)["aten.addmm.default"] == 0
    want, got = q(**calib[0]), lowered(**calib[0])
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=ATOL)


def test_conv1d_gpt2_compiles_to_int8_and_agrees(gpt2):
    """End to end: the W8A8 GPT-2 compiles (host ISA) with its 8 Conv1D linears on int8
    kernels (the tied LM head stays fp32), within ATOL of the fake-quant graph."""
    from lowbit.compiler import compile as lowbit_compile

    gm, calib = gpt2
    q = quantize(gm, recipes.W8A8, calibration=calib, progress=False)
    mod = lowbit_compile(q, target="cpu")
    kinds = [k for _, k in mod.meta["lowering"]]
    assert sum(k.startswith("linear_u8s8") for k in kinds) == 8, kinds
    for batch in calib:
        torch.testing.assert_close(torch.as_tensor(mod(**batch).numpy()),
                                   q(**batch).logits.detach(), rtol=0, atol=ATOL)
