"""find_transformer on ONNX files: the same TransformerMap as FX spotting gives.

Files come from torch's two exporters: dynamo (``torch.onnx.export(..., dynamo=True)``: fused
LayerNormalization / Gelu, weights folded to ``val_N`` initializers, decomposed SDPA, or the
``Attention`` op at opset 23) and TorchScript (opset 14: decomposed LayerNorm, Erf GELU,
``onnx::MatMul_N`` weights, names from node paths). Tiny seeded HF configs (BERT, GPT-2,
Llama) are compared with FX spotting of the same model role for role and name for name; the
real MiniLM is checked under both exporters (marked weights("minilm")).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
import torch

from lowbit.capture import capture
from lowbit.errors import PatternError
from lowbit.passes.fx.spot import find_transformer as fx_find_transformer
from lowbit.passes.onnx import find_transformer, load_onnx, quantize_onnx
from lowbit.passes.patterns import ROLES
from lowbit.recipes import W8A8_DYNAMIC
from lowbit.testing import op_counts

pytest.importorskip("transformers")


import onnx_test_models as M  # noqa: E402  (conftest.py puts this folder on sys.path)


def spot(name: str):
    return find_transformer(load_onnx(M.onnx_file(name)))


def _check_invariants(tm) -> None:
    assert tm.ir == "onnx"
    assert tm.roles_present() <= set(ROLES)
    nodes = [ref.node for _, ref in tm.linears()] + [ref.node for _, ref in tm.norms()]
    assert len(nodes) == len(set(nodes)), "a node got two roles"
    for b in tm.blocks:
        assert all(a.op_type == "Add" for a in b.residual_adds)
    assert "block 0" in str(tm)


# ---- tiny HF models: ONNX spotting == FX spotting --------------------------------------------
@pytest.mark.parametrize("name, make", [("gpt2", "tiny_gpt2"), ("llama", "tiny_llama")])
def test_dynamo_export_matches_fx(name, make):
    model = getattr(M, make)()
    fx_tm = fx_find_transformer(capture(model, M.inputs()))
    tm = spot(name)
    _check_invariants(tm)
    assert M.summary(tm) == M.summary(fx_tm)
    assert tm.unclassified == [] == fx_tm.unclassified


def test_gpt2_structure():
    """HF Conv1D as Gemm(transB=0) ("in_out" weights), fused qkv through Split, tanh-GELU
    chain, and the tied lm_head (Transpose of the word-embedding initializer) named by its
    module, as FX names it."""
    tm = spot("gpt2")
    b = tm.blocks[0]
    assert b.style == "pre-ln" and b.attn.qkv.name == "transformer.h.0.attn.c_attn"
    assert b.attn.q is None and b.attn.qkv.weight_layout == "in_out"
    assert b.attn.qkv.node.op_type == "Gemm" and b.ffn.act_kind == "gelu_tanh"
    assert [h.name for h in tm.head] == ["lm_head"] and tm.head[0].weight_layout == "out_in"
    assert tm.embeddings[0].name == "transformer.wte" and tm.final_norm.name == "transformer.ln_f"


def test_llama_structure():
    """Decomposed RMSNorm (Pow / ReduceMean / Add / Sqrt / Reciprocal / Mul), RoPE, GQA, gated
    SiLU MLP; weights are dynamo-folded ``val_N`` initializers named through folded_from."""
    tm = spot("llama")
    b = tm.blocks[1]
    assert (b.attn.num_heads, b.attn.num_kv_heads, b.attn.rope) == (4, 2, True)
    assert b.attn_norm.kind == "rmsnorm" and len(b.attn_norm.nodes) == 7
    assert b.attn_norm.name == "model.layers.1.input_layernorm"
    assert b.ffn.gate.name == "model.layers.1.mlp.gate_proj" and b.ffn.act_kind == "silu"
    assert b.attn.q.weight.startswith("val_") and b.attn.q.name == "model.layers.1.self_attn.q_proj"


def test_bert_dynamo():
    """LayerNormalization and Gelu ops, MatMul + bias Add, the pooler as Gemm(transB=1)."""
    tm = spot("bert")
    _check_invariants(tm)
    assert [b.style for b in tm.blocks] == ["post-ln", "post-ln"]
    assert tm.blocks[0].attn.core_kind == "softmax" and tm.blocks[0].attn.num_heads == 4
    q = tm.blocks[0].attn.q
    assert (q.name, q.weight_layout, q.bias) == ("encoder.layer.0.attention.self.query", "in_out",
                                                  "encoder.layer.0.attention.self.query.bias")
    assert tm.head[0].node.op_type == "Gemm" and tm.head[0].weight_layout == "out_in"
    assert {e.role for e in tm.embeddings} == {"embedding.word", "embedding.position",
                                               "embedding.token_type"}


def test_bert_attention_op():
    """At opset 23 the dynamo exporter emits the fused ``Attention`` op: core_kind "sdpa"."""
    tm = spot("bert23")
    assert op_counts(load_onnx(M.onnx_file("bert23")))["Attention"] == 2
    assert [b.attn.core_kind for b in tm.blocks] == ["sdpa", "sdpa"]
    assert M.summary(tm) == M.summary(spot("bert"))


def test_bert_torchscript_decomposed():
    """TorchScript at opset 14: LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add,
    GELU as an Erf chain, weights named ``onnx::MatMul_N``, unknown intermediate shapes (head
    count from the reshape constants). Same map as the dynamo file, names from node paths."""
    model = load_onnx(M.onnx_file("bert_ts14"))
    counts = op_counts(model)
    assert counts["LayerNormalization"] == 0 and counts["Erf"] == 2 and counts["Gelu"] == 0
    tm = find_transformer(model)
    assert tm.blocks[0].attn.q.weight.startswith("onnx::MatMul_")
    assert len(tm.blocks[0].attn_norm.nodes) == 9
    assert M.summary(tm, head=False) == M.summary(spot("bert"), head=False)


def test_hand_written_shared_blocks():
    """A hand-written pre-norm block applied twice (ALBERT-style shared weights): attention as
    softmax(q @ k^T / sqrt(d)) @ v, RMSNorm in its Div form ``x / Sqrt(mean(x^2) + eps) * w``,
    a ReLU MLP. (FX spotting finds the attention but not this RMSNorm form, hence no FFN.)"""
    tm = spot("shared")
    assert [b.style for b in tm.blocks] == ["pre-ln", "pre-ln"] and tm.unclassified == []
    b = tm.blocks[1]
    assert (b.attn_norm.kind, b.attn_norm.name, len(b.attn_norm.nodes)) == ("rmsnorm",
                                                                           "block.norm1", 6)
    assert b.ffn.act_kind == "relu" and b.attn.num_heads == 2 and b.attn.core_kind == "softmax"
    assert [ref.name for _, ref in b.linears()] == [f"block.{n}" for n in
                                                    ("q", "k", "v", "o", "up", "down")]


# ---- what spotting must not do, and what it must say ------------------------------------------
def test_spotting_is_read_only_and_sees_through_qdq():
    model = load_onnx(M.onnx_file("bert"))
    before = ir.to_proto(model).SerializeToString()
    tm = find_transformer(model)
    assert ir.to_proto(model).SerializeToString() == before
    quantized = quantize_onnx(model, W8A8_DYNAMIC)   # per-token float math on every input
    assert M.summary(find_transformer(quantized)) == M.summary(tm)


def test_computed_weight_is_refused_with_a_reason():
    """A MatMul whose weight is computed at run time (W * f(mask)) is no linear: noted in
    ``unclassified`` with the reason, the rest of the block still spotted."""
    model = load_onnx(M.onnx_file("bert"))
    tm = find_transformer(model)
    ffn_in = tm.blocks[1].ffn.up.node
    w = ffn_in.inputs[1]
    mask = model.graph.inputs[1]
    cast = ir.node("Cast", [ir.node("ReduceMax", [mask], attributes={"keepdims": 0}).outputs[0]],
                   attributes={"to": ir.DataType.FLOAT})
    scaled = ir.node("Mul", [w, cast.outputs[0]])
    model.graph.insert_before(ffn_in, [cast.inputs[0].producer(), cast, scaled])
    ffn_in.replace_input_with(1, scaled.outputs[0])
    tm = find_transformer(model)
    assert tm.blocks[1].ffn is None and tm.blocks[0].ffn is not None
    notes = dict(tm.unclassified)
    assert "computed by Mul" in notes[ffn_in.name] and w.name in notes[ffn_in.name]


def test_no_transformer_mlp():
    """A plain MLP: no blocks; its linears are reported, none dropped silently."""
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    path = Path(M._TMP.name) / "mlp.onnx"
    torch.onnx.export(mlp.eval(), (torch.randn(2, 16),), str(path), dynamo=True, verbose=False)
    tm = find_transformer(load_onnx(path))
    assert tm.blocks == [] and len(tm.unclassified) == 2
    assert all("outside any transformer block" in why for _, why in tm.unclassified)


def test_wrong_type():
    with pytest.raises(PatternError, match="onnx_ir.Model"):
        find_transformer(onnx.ModelProto())


# ---- the real MiniLM, both exporters ----------------------------------------------------------
@pytest.mark.weights("minilm")
def test_minilm_both_exporters():
    model, tok = M.minilm()
    enc = tok(M.sentences(2), padding=True, return_tensors="pt")
    fx_tm = fx_find_transformer(capture(model, {"input_ids": enc["input_ids"],
                                                "attention_mask": enc["attention_mask"]}))
    dyn, ts = spot("minilm"), spot("minilm_ts")
    assert len(dyn.blocks) == 6 and dyn.blocks[5].attn.num_heads == 12
    assert M.summary(dyn) == M.summary(fx_tm)
    # the TorchScript file outputs last_hidden_state only: no pooler, hence no head
    assert M.summary(ts, head=False) == M.summary(fx_tm, head=False) and ts.head == []
    assert dyn.unclassified == [] and ts.unclassified == []
