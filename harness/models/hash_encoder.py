"""A deterministic, dependency-free embedder: signed feature hashing of lower-cased word tokens.

It is a lexical baseline and a plumbing check: vectors depend only on the text (blake2b, not Python's salted
``hash``), so a test can recompute every score independently, and CI can run the whole path in seconds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.models.base import EmbeddingAdapter

_TOKEN = re.compile(r"\w+", re.UNICODE)


def hash_embed(text: str, dim: int) -> np.ndarray:
    """The vector of one text: +1/-1 per token at a hashed index, L2-normalised (zero vector for no tokens)."""
    vec = np.zeros(dim, dtype=np.float64)
    for token in _TOKEN.findall(text.lower()):
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        vec[value % dim] += 1.0 if (value >> 63) & 1 else -1.0
    norm = np.linalg.norm(vec)
    return (vec / norm if norm > 0 else vec).astype(np.float32)


class HashEncoder(EmbeddingAdapter):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.dim = int(cfg.get("dim", 256))

    @property
    def embed_dim(self) -> int:
        return self.dim

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        return np.stack([hash_embed(prefix + text, self.dim) for text in texts])
