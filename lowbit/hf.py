"""Hugging Face model directories: load the model class its config names, and its tokenizer.

Offline only (``HF_HUB_OFFLINE=1``): no hub is reachable, a directory must hold the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lowbit.errors import HFLoadError  # re-exported: its old home

__all__ = ["HFLoadError", "load_hf_model", "load_hf_tokenizer"]


def load_hf_model(path: str | Path) -> tuple[Any, Any]:
    """``(model in eval mode, config)``; the class named in ``config.architectures`` (so task
    heads survive), else AutoModel. Decoders get ``use_cache=False`` (capture needs no KV cache)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise HFLoadError(f"{path}: a directory without config.json, so not a Hugging Face "
                          f"model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()   # "Loading weights" on every load
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        architecture = (config.architectures or ["AutoModel"])[0]
        model_class = getattr(transformers, architecture, transformers.AutoModel)
        model = model_class.from_pretrained(path, local_files_only=True).eval()
    except Exception as e:  # transformers raises OSError, ValueError ... for one meaning
        raise HFLoadError(f"{path}: transformers cannot load it: {type(e).__name__}: {e}") from e
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    return model, config


def load_hf_tokenizer(path: str | Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(path), local_files_only=True)
    except Exception as e:
        raise HFLoadError(f"{path}: no usable tokenizer in the directory "
                          f"({type(e).__name__}: {e})") from e
