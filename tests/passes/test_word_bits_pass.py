"""QuantizeWordBits on both IRs, on a tiny GPT-2 (random weights, vocabulary 512, hidden 64)
whose LM head is tied to the word embedding.

* FX structure: the lookup becomes ``tiered_embedding``, the tied head ``tiered_linear`` over
  the same tiers, the float table (both aliases) leaves the graph; idempotent; ``head="float"``
  keeps the head (and the parameter it reads); ``head="separate"`` its own alphas;
* FX numbers: logits equal the model with its table replaced by ``dequantize()`` within
  FP32_RTOL (the same products summed per tier);
* ONNX: the model exported by torch, rewritten to ``lowbit.TieredEmbedding`` /
  ``TieredLinear``, runs in onnxruntime and agrees with the FX rewrite within AGREE_RTOL, with
  bit-identical codes; the FX graph exported through the op translations agrees too;
* errors: a plan for another vocabulary, a graph without a word table, D not a multiple of 8.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.errors import ConfigError
from lowbit.passes.fx.word_bits import QuantizeWordBits as FxWordBits
from lowbit.passes.fx.word_bits import word_bits_nodes
from lowbit.passes.onnx import load_onnx, save_onnx
from lowbit.passes.onnx.word_bits import WB_DOMAIN, WB_EMBEDDING, WB_LINEAR
from lowbit.passes.onnx.word_bits import QuantizeWordBits as OnnxWordBits
from lowbit.quant import word_bits as wb
from lowbit.quant.word_ops import TIERED_EMBEDDING, TIERED_LINEAR
from lowbit.testing import assert_idempotent

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "onnx"))
import onnx_test_models as M  # shared with tests/passes/onnx (the path above)

VOCAB = 512
FP32_RTOL = 1e-5     # max |diff| / max |logit|: float32 sums of the same products
AGREE_RTOL = 1e-5    # FX vs onnxruntime (the 1e-5; measured ~3e-7)
TABLE = ("transformer.wte.weight", "lm_head.weight")
aten = torch.ops.aten


@functools.cache
def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False, bos_token_id=0,
                                  eos_token_id=0, tie_word_embeddings=True)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _inputs() -> dict:
    return M.inputs(batch=2, vocab=VOCAB)


@functools.cache
def _plan(method: str = "bcq", vocab: int = VOCAB) -> wb.WordBitsPlan:
    counts = torch.randint(0, 30, (vocab,), generator=torch.Generator().manual_seed(1))
    return wb.plan_by_rule(counts, 3, 2.0, method=method)    # 3 tiers: the ONNX form pads one


@functools.cache
def _onnx_file() -> Path:
    return M.export_dynamo(_gpt2(), _inputs(), Path(M._TMP.name) / "gpt2_tied_512.onnx")


def _logits(out) -> np.ndarray:
    y = out.logits if hasattr(out, "logits") else out[0]
    return y.detach().numpy()


def _fx(head: str = "tied", method: str = "bcq"):
    gm = lowbit.capture(_gpt2(), _inputs())
    result = FxWordBits(_plan(method), head=head, progress=False)(gm)
    assert result.modified
    return gm


def _reference(method: str = "bcq", float_head: bool = False) -> np.ndarray:
    """The float model with its table replaced by the fit's ``dequantize()`` (the head too,
    unless ``float_head``: then it keeps the float table)."""
    model = copy.deepcopy(_gpt2())
    te = wb.quantize_embedding(model.transformer.wte.weight, _plan(method), progress=False)
    if float_head:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.transformer.wte.weight.copy_(te.dequantize())
    return _logits(model(**_inputs()))


def _close(y: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    assert np.abs(y - ref).max() <= rtol * np.abs(ref).max()


@pytest.mark.parametrize("method", ["bcq", "uniform"])
def test_fx_tied_head_reads_the_same_tiers(method):
    gm = _fx(method=method)
    ops = [n.target for n in word_bits_nodes(gm)]
    assert ops == [TIERED_EMBEDDING, TIERED_LINEAR]
    emb, head = word_bits_nodes(gm)
    assert [a.target for a in emb.args[2]] == [a.target for a in head.args[2]]   # shared planes
    assert [a.target for a in emb.args[3]] == [a.target for a in head.args[3]]   # and alphas
    names = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    names |= {n for n, _ in gm.named_buffers(remove_duplicate=False)}
    assert not names & set(TABLE)                                  # the float table is gone
    embeddings = [n for n in gm.graph.nodes if n.target == aten.embedding.default]
    assert len(embeddings) == 1                                    # the position table stays
    report = gm.meta["lowbit_word_bits"]
    assert (report["vocab"], report["dim"], report["head"]) == (VOCAB, 64, "tied")
    assert report["heads"] == ["lm_head"] and report["kept_for"] == []
    _close(_logits(gm(**_inputs())), _reference(method), FP32_RTOL)


def test_fx_idempotent():
    gm = lowbit.capture(_gpt2(), _inputs())
    assert_idempotent(FxWordBits(_plan(), progress=False), gm)


def test_fx_head_float_keeps_the_head():
    gm = _fx(head="float")
    assert [n.target for n in word_bits_nodes(gm)] == [TIERED_EMBEDDING]
    heads = [n for n in gm.graph.nodes if n.target == aten.linear.default
             and n.meta["val"].shape[-1] == VOCAB]
    assert len(heads) == 1
    assert gm.meta["lowbit_word_bits"]["kept_for"] == [f"{heads[0].name} (aten.linear.default)"]
    names = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    assert set(TABLE) <= names                                     # still read by the head
    _close(_logits(gm(**_inputs())), _reference(float_head=True), FP32_RTOL)


def test_fx_head_separate_has_its_own_alphas():
    gm = _fx(head="separate")
    emb, head = word_bits_nodes(gm)
    assert [a.target for a in emb.args[2]] == [a.target for a in head.args[2]]   # shared codes
    assert all("wb_head_alpha" in a.target for a in head.args[3])
    assert not set(TABLE) & {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    _close(_logits(gm(**_inputs())), _reference(), FP32_RTOL)


@pytest.mark.parametrize("method, head", [("bcq", "tied"), ("uniform", "tied"),
                                          ("bcq", "float")])
def test_onnx_runs_in_onnxruntime_and_agrees_with_fx(tmp_path, method, head):
    gm = _fx(head, method)
    model = load_onnx(_onnx_file())
    ir.external_data.load_to_model(model)
    assert OnnxWordBits(_plan(method), head=head, progress=False)(model).modified
    nodes = [n for n in model.graph if n.domain == WB_DOMAIN]
    assert [n.op_type for n in nodes] == [WB_EMBEDDING, WB_LINEAR][:2 if head == "tied" else 1]
    assert all(len(n.inputs) == 2 + 3 * 4 + (n.op_type == WB_LINEAR) for n in nodes)
    assert ("lm_head.weight" in model.graph.initializers) == (head == "float")
    assert json.loads(model.metadata_props["lowbit.word_bits"])["head"] == head
    # the same codes, bit for bit, on both IRs (tier 3 is the ONNX form's empty padding)
    fx_state = dict(gm.named_parameters()) | dict(gm.named_buffers())
    for name, value in model.graph.initializers.items():
        if ".wb_" not in name or name.endswith(("_3", "bias")):
            continue
        fx_value, onnx_value = fx_state[name].detach().numpy(), value.const_value.numpy()
        if "offset" in name and not fx_value.size:                # BCQ: no offset, zeros
            assert not onnx_value.any()
            continue
        np.testing.assert_array_equal(onnx_value, fx_value, err_msg=name)
    path = tmp_path / "word_bits.onnx"
    save_onnx(model, path)
    feeds = {k: v.numpy() for k, v in _inputs().items()}
    y_fx = _logits(gm(**_inputs()))
    for level in ("all", "disable"):
        _close(OrtRunner(path, optimization=level)(**feeds)[0], y_fx, AGREE_RTOL)


def test_onnx_idempotent():
    model = load_onnx(_onnx_file())
    ir.external_data.load_to_model(model)
    assert_idempotent(OnnxWordBits(_plan(), progress=False), model)


@pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode")
def test_fx_graph_exports_through_export_onnx(tmp_path):
    """``lowbit.export_onnx`` of the FX rewrite (its translations of the tiered ops, and the
    decompositions in the file): onnxruntime agrees with the FX graph."""
    gm = _fx()
    path = lowbit.export_onnx(gm, tmp_path / "fx_word_bits.onnx", ((), _inputs()))
    assert {n.op_type for n in load_onnx(path).graph} >= {"TieredEmbedding", "TieredLinear"}
    y = OrtRunner(path)(**{k: v.numpy() for k, v in _inputs().items()})[0]
    _close(y, _logits(gm(**_inputs())), AGREE_RTOL)


def test_vocabulary_mismatch_is_named():
    gm = lowbit.capture(_gpt2(), _inputs())
    with pytest.raises(ConfigError, match=r"covers 500 token ids.*transformer\.wte has 512"):
        FxWordBits(_plan(vocab=500), progress=False)(gm)
    model = load_onnx(_onnx_file())
    with pytest.raises(ConfigError, match="covers 500 token ids"):
        OnnxWordBits(_plan(vocab=500), progress=False)(model)


class _Table(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, dim)

    def forward(self, input_ids):
        return self.emb(input_ids).sum(-1)


def test_no_embedding_and_bad_width_and_options():
    plain = lowbit.capture(torch.nn.Linear(8, 8), (torch.randn(2, 8),))
    with pytest.raises(ConfigError, match="no word embedding found"):
        FxWordBits(_plan(), progress=False)(plain)
    narrow = lowbit.capture(_Table(12), {"input_ids": M.ids(vocab=VOCAB)})
    with pytest.raises(ConfigError, match="12 wide.*multiple of 8"):
        FxWordBits(_plan(), progress=False)(narrow)
    with pytest.raises(ConfigError, match="head must be one of"):
        FxWordBits(_plan(), head="untied")
    with pytest.raises(ConfigError, match="WordBitsPlan"):
        FxWordBits({"bits": [4, 2]})


def test_grouped_plan_is_refused():
    import dataclasses

    gm = lowbit.capture(_gpt2(), _inputs())
    with pytest.raises(ConfigError, match="alpha groups of 16 columns"):
        FxWordBits(dataclasses.replace(_plan(), group=16), progress=False)(gm)
