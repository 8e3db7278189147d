"""Any sentence-transformers ``CrossEncoder`` (a hub id or a local folder) as a reranker.

Owns: loading the model (device, dtype, max_length), the pair texts (optional query / passage prefixes, which are
recorded), and two entry points that return one float32 score per (query, passage) pair: ``score_pairs`` (the API a
``RerankPipeline`` second stage needs) and mteb's CrossEncoderProtocol ``predict``. Scores are raw logits unless
``activation: sigmoid`` (sentence-transformers applies a sigmoid by default for one-label models; a logit ranks the
same and keeps the full range, as the native NV reranker adapter does). Must not know where candidates come from
or where results go; it defines no ``encode``, so mteb never mistakes it for an embedder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.engine.device import dtype_name, resolve_device, resolve_dtype
from harness.errors import ConfigError
from harness.models.base import AdapterBase

ACTIVATIONS = ("none", "sigmoid")


class CrossEncoderAdapter(AdapterBase):
    """Config keys: name, revision, path (a local folder; null: the hub ``name`` at ``revision``), max_length,
    activation (none | sigmoid), query_prefix, passage_prefix, batch_size, device, dtype, trust_remote_code."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        import torch
        from sentence_transformers import CrossEncoder

        self.device = resolve_device(cfg.get("device"))
        self.dtype = resolve_dtype(cfg.get("dtype"), self.device)
        self.activation = str(cfg.get("activation") or "none").lower()
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={cfg.get('activation')!r}: expected one of {ACTIVATIONS}")
        self.query_prefix = str(cfg.get("query_prefix") or "")
        self.passage_prefix = str(cfg.get("passage_prefix") or "")
        path = cfg.get("path")
        self.model = CrossEncoder(
            str(path or self.name),
            device=str(self.device),
            revision=None if path else self.revision,
            max_length=cfg.get("max_length"),
            trust_remote_code=bool(cfg.get("trust_remote_code", False)),
            model_kwargs={"dtype": self.dtype},
        )
        if self.model.num_labels != 1:
            raise ConfigError(
                f"model {self.name} ({path or 'hub'}): a reranker needs one output logit, this CrossEncoder has "
                f"{self.model.num_labels} labels"
            )
        self.max_length = int(self.model.max_length) if self.model.max_length else None
        # identity: the raw logit; sigmoid: sentence-transformers' default for one-label models
        self._activation_fn = torch.nn.Sigmoid() if self.activation == "sigmoid" else torch.nn.Identity()

    # -- the reranker API --------------------------------------------------------------------------------
    def score_pairs(
        self, queries: Sequence[str], passages: Sequence[str], *, task: str | None = None
    ) -> np.ndarray:
        """One float32 score per ``(queries[i], passages[i])``; higher means more relevant."""
        if len(queries) != len(passages):
            raise ValueError(f"score_pairs: {len(queries)} queries but {len(passages)} passages")
        if task is not None:
            self.prefixes_used.setdefault(task, {}).update(
                {"query": self.query_prefix, "document": self.passage_prefix}
            )
        if not queries:
            return np.zeros(0, dtype=np.float32)
        pairs = [[self.query_prefix + q, self.passage_prefix + p] for q, p in zip(queries, passages, strict=True)]
        scores = self.model.predict(
            pairs,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            activation_fn=self._activation_fn,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(pairs))

    # -- mteb's CrossEncoderProtocol ---------------------------------------------------------------------
    def predict(
        self,
        inputs1: Iterable[Mapping[str, Any]],
        inputs2: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        queries = [text for batch in inputs1 for text in batch["text"]]
        passages = [text for batch in inputs2 for text in batch["text"]]
        return self.score_pairs(queries, passages, task=getattr(task_metadata, "name", None))

    # -- what the run path records -----------------------------------------------------------------------
    def model_meta_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": self.name,
            "revision": self.revision or "no_revision_available",
            "max_tokens": self.max_length,
            "model_type": ["cross-encoder"],
            "framework": ["Sentence Transformers", "PyTorch"],
            "use_instructions": bool(self.query_prefix or self.passage_prefix),
        }
        fields.update(dict(self.cfg.get("meta") or {}))
        return fields

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "max_length": self.max_length,
            "activation": self.activation,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
        }
