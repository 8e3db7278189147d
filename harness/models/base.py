"""The embedder contract every adapter in harness/models/ fulfils.

Owns: turning mteb's ``encode`` call (a DataLoader of batches, the task's metadata, the prompt type) into
``encode_texts``; instruction resolution (via instructions.py) and the record of the strings actually used;
similarity; the mteb ``ModelMeta``. Subclasses own only ``embed``: tokenise, forward, pool. Must not know where
results go, and must not import mteb at module level (the GPU machines have no mteb).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from harness.engine.device import dtype_name, resolve_device, resolve_dtype
from harness.models.instructions import InstructionTable


def _registered_meta(name: str) -> Any | None:
    from harness.mteb_import import import_mteb

    mteb = import_mteb()
    try:
        return mteb.get_model_meta(name)
    except KeyError:
        return None


def _batch_tokens(value: Any) -> int | None:
    if value in (None, "", 0):
        return None
    try:
        tokens = int(value)
    except (TypeError, ValueError):
        tokens = -1
    if tokens < 1 or isinstance(value, bool):
        from harness.errors import ConfigError

        raise ConfigError(f"model.batch_tokens={value!r}: expected a positive number of padded tokens, or null")
    return tokens


class AdapterBase:
    """What the run path needs of any model (embedder, cross-encoder, BM25, pipeline): a name and revision for the
    results folder, a batch size, mteb's ModelMeta, a description for provenance, and the prefixes it used."""

    #: bumped when a subclass changes what it computes (part of provenance and of cache keys)
    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = dict(cfg)
        self.name: str = str(cfg["name"])
        self.revision: str | None = cfg.get("revision")
        self.batch_size = int(cfg.get("batch_size") or 32)
        #: padded tokens per batch (rows x longest row), on top of ``batch_size`` rows; None: rows only
        self.batch_tokens = _batch_tokens(cfg.get("batch_tokens"))
        self.show_progress = bool(cfg.get("show_progress", False))
        #: {task: {role: prefix}}: the strings actually put in front of texts, for provenance
        self.prefixes_used: dict[str, dict[str, str]] = {}
        self._meta: Any = None

    @property
    def mteb_model_meta(self) -> Any:
        if self._meta is None:
            from harness.mteb_import import import_mteb

            import_mteb()
            from mteb.models.model_meta import ModelMeta, ScoringFunction

            fields = self.model_meta_fields()
            registered = _registered_meta(fields["name"])
            if registered is not None:
                # leaderboard reviewers reject metadata that differs from mteb's registry entry
                self._meta = registered.model_copy(update={"revision": fields["revision"]})
            else:
                if fields.get("similarity_fn_name"):
                    fields["similarity_fn_name"] = ScoringFunction(fields["similarity_fn_name"])
                self._meta = ModelMeta.create_empty(overwrites=fields)
        return self._meta

    @mteb_model_meta.setter
    def mteb_model_meta(self, value: Any) -> None:
        self._meta = value

    def model_meta_fields(self) -> dict[str, Any]:
        """Fields of mteb's ModelMeta this adapter knows; ``conf/model`` may add more under ``meta:``."""
        fields: dict[str, Any] = {"name": self.name, "revision": self.revision or "no_revision_available"}
        fields.update(dict(self.cfg.get("meta") or {}))
        return fields

    def describe(self) -> dict[str, Any]:
        """What changes the scores, for provenance."""
        return {
            "adapter": f"{type(self).__module__}.{type(self).__name__}",
            "adapter_version": self.adapter_version,
            "name": self.name,
            "revision": self.revision,
            "path": self.cfg.get("path"),
        }


class EmbeddingAdapter(AdapterBase):
    """Base class for embedders. Config keys: see ``conf/model/*.yaml``."""

    #: the encode engine (embedding cache, torchrun ranks, progress), set by the run path; None: ``embed`` directly
    engine: Any = None

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.device = resolve_device(cfg.get("device"))
        self.dtype = resolve_dtype(cfg.get("dtype"), self.device)
        self.max_length: int | None = cfg.get("max_length")
        self.normalize = bool(cfg.get("normalize", True))
        self.similarity_fn = str(cfg.get("similarity", "cosine"))
        if self.similarity_fn not in ("cosine", "dot"):
            raise ValueError(f"model.similarity must be cosine or dot, got {self.similarity_fn!r}")
        self.instructions = InstructionTable.load(cfg.get("instructions"))

    # -- what a family implements -------------------------------------------------------------------------
    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        """Vectors for ``texts`` with ``prefix`` in front (the family decides how), in input order."""
        raise NotImplementedError

    @property
    def embed_dim(self) -> int | None:
        return None

    # -- the public API ----------------------------------------------------------------------------------
    def encode_texts(
        self,
        texts: Sequence[str],
        role: str = "query",
        task: str | None = None,
        instruction: str | None = None,
        *,
        task_type: str | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` as queries or documents; returns float32 ``[len(texts), dim]``.

        ``task`` picks the instruction from the family's file; ``instruction`` overrides it with a bare task
        instruction that the family's template wraps; ``instruction=""`` means no instruction.
        """
        prefix = self._resolve_prefix(role, task, task_type, instruction)
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim or 0), dtype=np.float32)
        if self.engine is not None:  # the run path: cache, ranks, progress (harness/engine/encode.py)
            embed_fn = self._embed_fn(prefix, role, batch_size)
            return self.engine.encode_dense(
                embed_fn, texts, key=self.vector_key_fields(role, prefix), role=role, label=self.name
            )
        vectors = self.embed(texts, prefix=prefix, role=role, batch_size=batch_size or self.batch_size)
        return np.asarray(vectors, dtype=np.float32)

    def encode_corpus(
        self,
        texts: Sequence[str],
        task: str | None = None,
        instruction: str | None = None,
        *,
        task_type: str | None = None,
        batch_size: int | None = None,
    ) -> Any:
        """Document vectors as ``harness.engine.encode.EncodedTexts``: shards (cached when the engine has a
        cache) that the streaming search reads one at a time, so a corpus need not fit in memory."""
        from harness.engine.encode import EncodeEngine

        prefix = self._resolve_prefix("document", task, task_type, instruction)
        engine = self.engine if self.engine is not None else EncodeEngine()
        embed_fn = self._embed_fn(prefix, "document", batch_size)
        key = self.vector_key_fields("document", prefix)
        return engine.encode(embed_fn, list(texts), key=key, role="document", label=self.name)

    def _resolve_prefix(self, role: str, task: str | None, task_type: str | None, instruction: str | None) -> str:
        prefix = self.instructions.prefix_for(role, task=task, task_type=task_type, instruction=instruction)
        self.prefixes_used.setdefault(task or "<none>", {})[role] = prefix
        return prefix

    def _embed_fn(self, prefix: str, role: str, batch_size: int | None) -> Any:
        size = batch_size or self.batch_size
        return lambda texts: self.embed(texts, prefix=prefix, role=role, batch_size=size)

    def vector_key_fields(self, role: str, prefix: str) -> dict[str, Any]:
        """What identifies a vector in the embedding cache: everything ``describe()`` says changes it, the role
        and the exact prefix string. The device counts by type only (``cuda:3`` computes what ``cuda:0`` does;
        a GPU does not compute what a CPU does); where the instruction file lives does not count (its strings do)."""
        fields = {k: v for k, v in self.describe().items() if k != "instructions_source"}
        fields["device"] = str(fields.get("device", "")).split(":")[0]
        return {"model": fields, "role": role, "prefix": prefix}

    # -- mteb's EncoderProtocol -------------------------------------------------------------------------
    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        # mteb's PromptType is a str enum: "query" / "document"; None (symmetric tasks) reads as the query side
        side = str(getattr(prompt_type, "value", prompt_type)) if prompt_type is not None else "query"
        role = "document" if side == "document" else "query"
        return self.encode_texts(
            texts, role=role, task=task_metadata.name, task_type=task_metadata.type, batch_size=kwargs.get("batch_size")
        )

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32)
        if self.similarity_fn == "cosine":
            a = torch.nn.functional.normalize(a, dim=-1)
            b = torch.nn.functional.normalize(b, dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32)
        if self.similarity_fn == "cosine":
            return torch.nn.functional.cosine_similarity(a, b, dim=-1)
        return (a * b).sum(-1)

    def model_meta_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": self.name,
            "revision": self.revision or "no_revision_available",
            "max_tokens": self.max_length,
            "embed_dim": self.embed_dim,
            "similarity_fn_name": self.similarity_fn,
            "use_instructions": bool(self.instructions.tasks or self.instructions.by_type or self.instructions.default),
            "framework": ["PyTorch"],
        }
        fields.update(dict(self.cfg.get("meta") or {}))
        module = getattr(self, "model", None)
        if "n_parameters" not in fields and hasattr(module, "parameters"):
            fields["n_parameters"] = sum(p.numel() for p in module.parameters())
        return fields

    def describe(self) -> dict[str, Any]:
        """What changes the vectors, for provenance (and, later, cache keys)."""
        return {
            **super().describe(),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "max_length": self.max_length,
            "normalize": self.normalize,
            "similarity": self.similarity_fn,
            "instructions_family": self.instructions.family,
            "instructions_source": self.instructions.source,
        }
