"""Models the ONNX pass tests share: tiny seeded Hugging Face models and the real MiniLM,
exported once per test session (dynamo or TorchScript) into a temporary folder.

Test files load this module with ``models()`` below (tests are not a package), so every file
of a session sees one module object and one export cache.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import types
import warnings
from pathlib import Path

import torch

VOCAB, SEQ = 1000, 8
_TMP = tempfile.TemporaryDirectory(prefix="lowbit-onnx-tests-")


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ids(batch: int = 1, seq: int = SEQ, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def inputs(batch: int = 1, seq: int = SEQ, seed: int = 0, vocab: int = VOCAB) -> dict:
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq - 2:] = 0  # some padding, so the mask path carries data
    return {"input_ids": ids(batch, seq, seed, vocab), "attention_mask": mask}


def batches(n: int, batch: int = 2, seq: int = SEQ, seed: int = 100) -> list[dict]:
    return [inputs(batch, seq, seed + i) for i in range(n)]


@functools.cache
def tiny_bert() -> torch.nn.Module:
    """2-layer BERT, hidden 64; every parameter drawn from a seeded normal (LayerNorm gains
    around 1), so no two tensors are equal and the exporter dedups nothing."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=VOCAB)
    model = transformers.BertModel(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "LayerNorm.weight" in name else 0.05 * noise)
    return model


@functools.cache
def tiny_gpt2() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@functools.cache
def tiny_llama() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128,
                                   vocab_size=VOCAB, max_position_embeddings=64, use_cache=False)
    return transformers.LlamaForCausalLM(cfg).eval()


@functools.cache
def tiny_gemma() -> torch.nn.Module:
    """2-layer Gemma 3 (decomposed RMSNorm with (1 + w) gains and casts, sandwich norms, a
    scaled embedding, the LM head tied to it); norm gains drawn so that they matter."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
                                        max_position_embeddings=64, sliding_window=16,
                                        use_cache=False, tie_word_embeddings=True)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


class _RMSNorm(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x):   # the Div form: x / sqrt(mean(x^2) + eps) * w
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Block(torch.nn.Module):
    """Pre-norm block, hand-written attention (softmax(q k^T / sqrt(d)) v), ReLU MLP."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = _RMSNorm(dim), _RMSNorm(dim)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(dim, dim) for _ in range(4))
        self.up, self.down = torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (f(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.down(torch.relu(self.up(self.norm2(x))))


class SharedBlocks(torch.nn.Module):
    """ALBERT-style: one block applied twice, so every weight is read by two linears."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = _Block()

    def forward(self, x):
        return self.block(self.block(x))


@functools.cache
def minilm():
    from lowbit.models import load_minilm

    return load_minilm(quiet=True)


_TEXT = ("the quick brown fox jumps over a lazy dog while quantized models run fast on small "
         "cpus and graphs of transformers are spotted by passes")


def sentences(n: int) -> list[str]:
    words = _TEXT.split()
    return [" ".join(words[(i * 7) % 11: (i * 7) % 11 + 4 + i % 9]) for i in range(n)]


def export_dynamo(model: torch.nn.Module, kwargs: dict, path: Path,
                  opset: int | None = None) -> Path:
    _quiet()
    torch.onnx.export(model, (), str(path), kwargs=kwargs, dynamo=True, opset_version=opset,
                      dynamic_shapes={k: {0: "batch", 1: "seq"} for k in kwargs},
                      verbose=False)
    return path


def export_torchscript(model: torch.nn.Module, kwargs: dict, path: Path, opset: int) -> Path:
    """TorchScript export of an HF model. transformers 5's ``forward`` takes its inputs by
    keyword only as far as the tracer is concerned ("multiple values for argument
    'use_cache'"), so the instance gets a positional forward for the duration of the export;
    parameter names stay the model's own."""
    _quiet()
    names = list(kwargs)
    cls_forward = type(model).forward

    def forward(self, *args):
        out = cls_forward(self, **dict(zip(names, args)))
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits

    model.forward = types.MethodType(forward, model)
    try:
        torch.onnx.export(model, tuple(kwargs.values()), str(path), dynamo=False,
                          opset_version=opset, input_names=names, output_names=["output"],
                          dynamic_axes={k: {0: "batch", 1: "seq"} for k in names})
    finally:
        del model.forward
    return path


@functools.cache
def onnx_file(name: str) -> Path:
    """Export (once per session) and return the path of a named model file."""
    path = Path(_TMP.name) / f"{name}.onnx"
    if name == "bert":
        return export_dynamo(tiny_bert(), inputs(), path)
    if name == "bert23":
        return export_dynamo(tiny_bert(), inputs(), path, opset=23)
    if name == "bert_ts14":
        return export_torchscript(tiny_bert(), inputs(), path, opset=14)
    if name == "gpt2":
        return export_dynamo(tiny_gpt2(), inputs(), path)
    if name == "llama":
        return export_dynamo(tiny_llama(), inputs(), path)
    if name == "gemma":
        return export_dynamo(tiny_gemma(), inputs(), path)
    if name == "shared":
        _quiet()
        torch.onnx.export(SharedBlocks().eval(), (torch.randn(1, SEQ, 32),), str(path),
                          dynamo=True, dynamic_shapes=({0: "batch", 1: "seq"},), verbose=False)
        return path
    model, tok = minilm()
    enc = tok(sentences(2), padding=True, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if name == "minilm":
        return export_dynamo(model, kwargs, path)
    if name == "minilm_ts":
        return export_torchscript(model, kwargs, path, opset=17)
    raise KeyError(name)


def summary(tm, *, head: bool = True) -> list[tuple]:
    """Everything two TransformerMaps must agree on, IR aside (core_kind differs on purpose:
    FX keeps SDPA, ONNX exporters decompose it)."""
    out = [(e.role, e.name, e.num_embeddings, e.dim) for e in tm.embeddings]
    out += [(role, n.name, n.kind, n.dim, n.weight_offset) for role, n in tm.norms()]
    for b in tm.blocks:
        a = b.attn
        out.append((b.index, b.style, a.num_heads, a.num_kv_heads, a.rope,
                    b.ffn.act_kind if b.ffn else None, len(b.residual_adds)))
        out += [(role, ref.name, ref.in_features, ref.out_features) for role, ref in b.linears()]
    if head:
        out += [("head", h.name, h.in_features, h.out_features) for h in tm.head]
    return out
