"""``lowbit.quantize_words``: copies the user's model (FX and ONNX), upgrades an old opset,
writes ``out``, refuses other inputs, and composes with ``lowbit.quantize`` (W8A8 of the rest
leaves the tiered ops alone)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.errors import ConfigError
from lowbit.passes.fx.word_bits import word_bits_nodes
from lowbit.passes.onnx.word_bits import word_bits_nodes as onnx_word_bits_nodes
from lowbit.quant.word_bits import plan_for_budget

VOCAB = 256


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2,
                                    n_positions=16, use_cache=False)).eval()
    batch = {"input_ids": torch.randint(0, VOCAB, (1, 6))}
    return lowbit.capture(lm, batch), batch


def _plan():
    counts = (1000 / torch.arange(1, VOCAB + 1)).long()       # Zipf-like, id 0 most frequent
    return plan_for_budget(counts, 2.5)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out[0]


def test_fx_copy_and_compose_with_w8a8(graph):
    gm, batch = graph
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    wgm = lowbit.quantize_words(gm, _plan(), progress=False)
    assert wgm is not gm and len(word_bits_nodes(wgm)) == 2          # lookup + tied head
    assert not word_bits_nodes(gm)                                   # the user's graph kept
    assert all(torch.equal(v, gm.state_dict()[k]) for k, v in before.items())
    q = lowbit.quantize(wgm, lowbit.recipes.W8A8, calibration=[batch], progress=False)
    assert len(word_bits_nodes(q)) == 2
    y, y_w = _logits(q(**batch)), _logits(wgm(**batch))
    assert y.shape == y_w.shape and lowbit.testing.sqnr(y_w, y) > 15      # W8A8 on the rest


def test_onnx_path_out_and_upgrade(graph, tmp_path):
    gm, batch = graph
    src = lowbit.export_onnx(gm, tmp_path / "lm.onnx", opset=21)
    m = lowbit.quantize_words(src, _plan(), out=tmp_path / "lm.words.onnx", progress=False)
    assert len(onnx_word_bits_nodes(m.graph)) == 2
    assert not onnx_word_bits_nodes(lowbit.load_onnx(src).graph)       # input file untouched
    feeds = {k: v.numpy() for k, v in batch.items()}
    y = OrtRunner(tmp_path / "lm.words.onnx")(**feeds)[0]
    y_fx = _logits(lowbit.quantize_words(gm, _plan(), progress=False)(**batch)).detach().numpy()
    assert abs(y - y_fx).max() <= 1e-5 * abs(y_fx).max()


def test_refuses_other_inputs(graph):
    gm, _ = graph
    with pytest.raises(ConfigError, match="captured graph"):
        lowbit.quantize_words(torch.nn.Embedding(4, 8), _plan())
    with pytest.raises(ConfigError, match="out= writes ONNX"):
        lowbit.quantize_words(gm, _plan(), out="x.onnx")
    with pytest.raises(ConfigError, match="takes an fx.GraphModule"):
        lowbit.quantize_words(42, _plan())
