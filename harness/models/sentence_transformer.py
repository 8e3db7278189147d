"""Any sentence-transformers model (a hub id or a local folder): the generic adapter.

The instruction prefix is passed as sentence-transformers' ``prompt``, which prepends it to each text (as mteb's own
wrapper does). Batches go through ``harness.engine.batching.run_batches`` (longest first by character count, the
key sentence-transformers sorts by itself, so batches hold the same texts; out-of-memory back-off on GPUs), one
``encode`` call per batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.engine.batching import run_batches
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
        self._tokens_seen = 0
        self._count_tokens()

    def _count_tokens(self) -> None:
        """Count real tokens (after truncation) as sentence-transformers tokenises, for tokens/s."""
        name = "preprocess" if hasattr(self.model, "preprocess") else "tokenize"
        original = getattr(self.model, name, None)
        if original is None:
            return

        def counting(*args: Any, **kwargs: Any) -> Any:
            features = original(*args, **kwargs)
            mask = features.get("attention_mask") if isinstance(features, Mapping) else None
            if mask is not None:
                self._tokens_seen += int(mask.sum())
            return features

        setattr(self.model, name, counting)

    @property
    def embed_dim(self) -> int | None:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        def forward(batch: list[str]) -> tuple[np.ndarray, int]:
            before = self._tokens_seen
            vectors = self.model.encode(
                batch,
                prompt=prefix or None,
                batch_size=len(batch),
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return vectors, self._tokens_seen - before

        return run_batches(texts, [len(t) for t in texts], forward, batch_size)
