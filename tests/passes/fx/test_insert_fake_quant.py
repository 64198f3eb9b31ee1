"""InsertFakeQuant + ConvertToQDQ: structure by role, idempotence, ignore lists, SQNR floors,
clear errors. Tiny seeded HF models (BERT post-LN, GPT-2 Conv1D, Llama gated/GQA)."""

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lowbit import recipes
from lowbit.capture import capture
from lowbit.config import PerGroup, QuantSpec
from lowbit.errors import CalibrationError, ConfigError
from lowbit.passes.fx.convert_qdq import ConvertToQDQ
from lowbit.passes.fx.insert_fake_quant import InsertFakeQuant, fake_quant_nodes
from lowbit.quantize import calibrate, convert, freeze, prepare, quantize
from lowbit.testing import assert_idempotent, op_counts, sqnr

QD = "quantized_decomposed."
# SQNR floors (dB) of the last hidden state against float on the calibration distribution.
# 8-bit per-channel weights with 8-bit per-tensor activations keep ~40-60 dB on these tiny
# random models; 4-bit weights lose ~6 dB per bit removed. Floors sit ~10 dB under measured.
SQNR_FLOOR = {"W8A8": 35.0, "W8A8_FULL": 25.0, "W8A8_DYNAMIC": 40.0, "W4A16_G128": 15.0,
              "W4A8": 15.0, "W8A8_PEG": 25.0}


def _bert(hidden=128):
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=2 * hidden, vocab_size=100)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return capture(model, inputs), inputs


@pytest.fixture(scope="module")
def bert():
    return _bert()


def _batches(inputs, n=3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 100, inputs["input_ids"].shape, generator=g),
             "attention_mask": inputs["attention_mask"]} for _ in range(n)]


@pytest.mark.parametrize("name", sorted(recipes.UNIFORM))   # BCQ: tests/passes/onnx/test_bcq.py
def test_recipes_structure_and_sqnr(bert, name):
    gm, inputs = bert
    recipe = recipes.BUILTIN[name]
    if name == "W8A8_PEG":      # K=6 groups do not divide hidden 128: refused, named; use 96
        with pytest.raises(ConfigError, match=r"groups=6\) does not divide the hidden size 128"):
            quantize(gm, recipe, calibration=_batches(inputs), progress=False)
        gm, inputs = _bert(hidden=96)
    q = quantize(gm, recipe, calibration=_batches(inputs), progress=False)
    c = op_counts(q)
    n_linear = 2 * 6  # q, k, v, o, ffn in, ffn out per block; pooler (head) left in float
    # W8A8_PEG: W8A8_FULL's 8 sites per block, 4 of them PEG (per channel): FFN input, FFN
    # output, the 2 residual sums; per tensor: q/k/v input, o input, o output, FFN-out input
    peg = 2 * 4 if name == "W8A8_PEG" else 0
    if recipe.weight.granularity == PerGroup(128):
        assert c[QD + "dequantize_per_channel_group.default"] == n_linear
    else:
        assert c[QD + "dequantize_per_channel.default"] == n_linear + peg
    acts = {"W8A8": 2 * 4, "W4A8": 2 * 4,  # q/k/v share one input quantizer: 4 per block
            "W8A8_FULL": 2 * 4 + 2 * 2 + 2 * 2,  # + 2 residual sums + o / FFN-out outputs
            "W8A8_DYNAMIC": 0, "W4A16_G128": 0, "W8A8_PEG": 2 * 4}[name]
    assert c[QD + "quantize_per_tensor.default"] == acts
    assert c[QD + "quantize_per_channel.default"] == peg
    assert c[QD + "quantize_per_token.default"] == (8 if name == "W8A8_DYNAMIC" else 0)
    assert c["aten.linear.default"] == n_linear + 1
    # float weights of quantized linears are gone; the pooler keeps its own
    params = dict(q.named_parameters())
    assert "encoder.layer.0.attention.self.query.weight" not in params
    assert "pooler.dense.weight" in params
    db = sqnr(gm(**inputs).last_hidden_state, q(**inputs).last_hidden_state)
    print(f"{name}: {db:.1f} dB")
    assert db > SQNR_FLOOR[name], f"{name}: {db:.1f} dB"


def test_user_graph_untouched_and_prepare_idempotent(bert):
    gm, _ = bert
    before = op_counts(gm)
    prepared = prepare(gm, recipes.W8A8_FULL)
    assert op_counts(gm) == before  # prepare copies
    assert len(fake_quant_nodes(prepared)) == 2 * 6 + 2 * 4 + 2 * 4
    assert_idempotent(InsertFakeQuant(recipes.W8A8_FULL), prepared)


def test_convert_idempotent_and_matches_fake_quant(bert):
    gm, inputs = bert
    prepared = prepare(gm, recipes.W8A8)
    calibrate(prepared, _batches(inputs), progress=False)
    freeze(prepared)
    fq_out = prepared(**inputs).last_hidden_state
    converted = assert_idempotent(ConvertToQDQ(), prepared)
    assert not fake_quant_nodes(converted)
    q_out = converted(**inputs).last_hidden_state
    # Same scales and grids; q/dq multiply by 1/s where fake-quant divides, so a value on a
    # rounding tie may move one activation step: allow a 1e-3 relative slack on the output.
    torch.testing.assert_close(q_out, fq_out, rtol=1e-3, atol=1e-3)


def test_ignore_by_glob_and_role(bert):
    gm, _ = bert
    r = recipes.W8A8.replace(ignore=("encoder.layer.1.*", "attn.o"))
    c = op_counts(convert(_calibrated(gm, r)))
    assert c[QD + "dequantize_per_channel.default"] == 5  # block 0: q, k, v, ffn in, ffn out


def _calibrated(gm, recipe, batches=None):
    p = prepare(gm, recipe)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    calibrate(p, batches or [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}],
              progress=False)
    return p


@pytest.mark.parametrize("make", ["gpt2", "llama"])
def test_other_architectures(make):
    torch.manual_seed(0)
    if make == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                           n_positions=32)).eval()
        n_lin = 2 * 4  # c_attn (qkv), c_proj, c_fc, mlp c_proj
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, vocab_size=100)).eval()
        n_lin = 2 * 7  # q, k, v, o, gate, up, down
    model.config.use_cache = False  # no KV-cache object in the outputs
    ids = torch.randint(0, 100, (1, 16))
    gm = capture(model, {"input_ids": ids})
    q = quantize(gm, recipes.W8A8, calibration=[{"input_ids": ids}], progress=False)
    assert op_counts(q)[QD + "dequantize_per_channel.default"] == n_lin
    assert sqnr(gm(input_ids=ids).logits, q(input_ids=ids).logits) > 25.0


def test_bad_inputs_named(bert):
    gm, inputs = bert
    with pytest.raises(ConfigError, match=r"PerGroup\(size=256\) does not divide .* 128"):
        quantize(gm, recipes.W4A16_G128.replace(
            weight=QuantSpec(bits=4, granularity=PerGroup(256))), progress=False)
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        quantize(gm, recipes.W8A8, calibration=[], progress=False)
    with pytest.raises(CalibrationError, match="pass calibration="):
        quantize(gm, recipes.W8A8, progress=False)
    with pytest.raises(ConfigError, match="none of its roles .* is in this model"):
        mlp = torch.export.export(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                                  (torch.randn(2, 8),)).module()
        prepare(mlp, recipes.W8A8_FULL)


def test_nan_in_calibration_names_site(bert):
    gm, inputs = bert
    p = prepare(gm, recipes.W8A8)
    with torch.no_grad():
        p.get_parameter("embeddings.word_embeddings.weight")[5] = float("nan")
    ids = torch.full((2, 16), 5)
    with pytest.raises(CalibrationError, match=r"observer at encoder.layer.0.attention.self.query:input"):
        calibrate(p, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], progress=False)


def test_calibration_memory_constant_in_batches(bert):
    """Peak traced memory of 4 vs 40 calibration batches (one model forward dominates both)."""
    import tracemalloc

    gm, inputs = bert

    def peak(n):
        p = prepare(gm, recipes.W8A8_FULL)
        gen = (_batches(inputs, 1)[0] for _ in range(n))  # batches made lazily
        tracemalloc.start()
        calibrate(p, gen, progress=False)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(4), peak(40)
    assert large < small * 1.5 + 64 * 1024, (small, large)
