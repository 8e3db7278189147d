"""Any sentence-transformers model (a hub id or a local folder): the generic adapter.

The instruction prefix is passed as sentence-transformers' ``prompt``, which prepends it to each text (as mteb's own
wrapper does). Length sorting and batching are sentence-transformers' own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.models.base import EmbeddingAdapter


class SentenceTransformerAdapter(EmbeddingAdapter):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        from sentence_transformers import SentenceTransformer

        path = cfg.get("path")
        self.model = SentenceTransformer(
            str(path or self.name),
            device=str(self.device),
            revision=None if path else self.revision,
            trust_remote_code=bool(cfg.get("trust_remote_code", False)),
            model_kwargs={"dtype": self.dtype},
        )
        if self.max_length:
            self.model.max_seq_length = int(self.max_length)
        else:
            self.max_length = self.model.max_seq_length

    @property
    def embed_dim(self) -> int | None:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        return self.model.encode(
            texts,
            prompt=prefix or None,
            batch_size=batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=self.show_progress,
        )
