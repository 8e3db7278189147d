"""llama-3.2-nv-embedqa-1b-v2 (embedder) and llama-3.2-nv-rerankqa-1b-v2 (cross-encoder), native.

Both are NVIDIA's ``llama_bidirec`` checkpoints (now named llama-nemotron-embed/rerank-1b-v2 on the hub): a
stock ``LlamaModel`` (llama3 RoPE scaling, GQA) run bidirectionally (``bidirectional.py``), loaded from the
original folder without ``trust_remote_code``; the tokenizer is read from ``tokenizer.json``
(``AutoTokenizer`` would ask for remote code). See ``shared/reference/nv-models.md`` §4.

* Embedder: text = ``"query: "`` / ``"passage: "`` + text (BOS from the tokenizer, no EOS); masked mean of the
  last hidden state over all real tokens (BOS and prefix included), in float32; Matryoshka ``dimensions``
  (truncate, then renormalise); L2 normalisation. Weight keys: bare ``LlamaModel`` keys (a ``model.`` prefix
  is accepted too).
* Reranker: one string ``question:{query} \\n \\n passage:{passage}``, left padding with pad = EOS when the
  tokenizer has no pad token, masked mean, ``score`` head (no bias), logit / ``temperature`` (config.json
  drops it: 1.0 then). Output: the raw logit. Weight keys: ``model.*`` + ``score.weight``.

Must not know tasks, benchmarks or how candidates are chosen (the pipeline calls ``score_pairs``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.engine.batching import run_batches
from harness.engine.device import dtype_name, resolve_device, resolve_dtype
from harness.errors import CheckpointError, ConfigError
from harness.models import bidirectional as bidir
from harness.models.base import AdapterBase, EmbeddingAdapter
from harness.models.checkpoint import (
    checkpoint_shapes,
    detect_prefix,
    load_weights_strict,
    read_config,
    resolve_checkpoint_dir,
)

log = logging.getLogger(__name__)

#: llama_bidirec config keys that are not LlamaConfig's (read by the adapters themselves)
_EXTRA_KEYS = ("pooling", "temperature")
#: Matryoshka sizes the embedder was trained for (NeMo spec table); others work but are untested by NVIDIA
MATRYOSHKA_DIMS = (384, 512, 768, 1024, 2048)
RERANK_TEMPLATE = "question:{query} \n \n passage:{passage}"
TOKENIZE_CHUNK = 4096


def _load_backbone_config(folder: Path, attn: str) -> tuple[dict[str, Any], Any]:
    raw = read_config(folder)
    where = str(folder / "config.json")
    pooling = raw.get("pooling", "avg")
    if pooling != "avg":
        raise CheckpointError(f"{where}: pooling={pooling!r}; only 'avg' (masked mean) is implemented")
    return raw, bidir.decoder_config("llama", raw, attn_implementation=attn, where=where, drop=_EXTRA_KEYS)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise CheckpointError("the tokenizer has neither a pad nor an eos token")
    return int(pad)


def rerank_texts(template: str, queries: list[str], passages: list[str]) -> list[str]:
    """One string per pair (not a tokenizer pair: the Llama-3 pair template would insert a second BOS)."""
    return [template.format(query=q, passage=p) for q, p in zip(queries, passages, strict=True)]


class LlamaEmbedAdapter(EmbeddingAdapter):
    """Config keys (``conf/model/nv-embedqa-1b-v2.yaml``): path, max_length, dimensions, dtype, autocast,
    ..."""

    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.folder = resolve_checkpoint_dir(cfg)
        attn = str(cfg.get("attn_implementation") or "sdpa")
        _, config = _load_backbone_config(self.folder, attn)
        self.model = bidir.decoder_model("llama", config)
        # the original saves AutoModel = the bare LlamaModel; accept a "model." prefix in case a copy kept one
        self.weight_prefix = detect_prefix(
            checkpoint_shapes(self.folder), "embed_tokens.weight", ("", "model.")
        )
        load_weights_strict(
            self.model, self.folder, dtype=self.dtype, device=self.device, prefix=self.weight_prefix
        )
        bidir.materialize_buffers(self.model, self.device)
        self.model.eval()
        self.autocast = bidir.autocast_dtype(cfg.get("autocast"), self.device)
        self.tokenizer = bidir.load_tokenizer(self.folder)
        self.hidden_size = int(config.hidden_size)
        dims = cfg.get("dimensions")
        self.dimensions = int(dims) if dims else None
        if self.dimensions is not None:
            if not 0 < self.dimensions <= self.hidden_size:
                raise ConfigError(
                    f"model.dimensions={dims}: must be between 1 and the hidden size {self.hidden_size}"
                )
            if self.hidden_size == MATRYOSHKA_DIMS[-1] and self.dimensions not in MATRYOSHKA_DIMS:
                log.warning(
                    "dimensions=%d is not one of the trained Matryoshka sizes %s",
                    self.dimensions,
                    MATRYOSHKA_DIMS,
                )
        if self.max_length is None:
            self.max_length = 8192

    @property
    def embed_dim(self) -> int:
        return self.dimensions or self.hidden_size

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the last hidden state (float32, unnormalised, full width)."""
        with bidir.inference_context(self.device, self.autocast):
            hidden = bidir.hidden_states(self.model, input_ids, attention_mask)
            return bidir.masked_mean(hidden, attention_mask)

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        pad_id = _pad_id(self.tokenizer)
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)

        def forward(rows: list[list[int]]) -> torch.Tensor:
            ids, mask = bidir.pad_batch(rows, pad_id, "right", self.device)
            vectors = self.pooled(ids, mask)[:, : self.embed_dim]  # Matryoshka: truncate, then normalise
            return bidir.l2_normalize(vectors) if self.normalize else vectors

        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = [prefix + text for text in texts[start : start + TOKENIZE_CHUNK]]
            encodings = self.tokenizer(chunk, max_length=self.max_length, truncation=True)["input_ids"]
            out[start : start + len(encodings)] = run_batches(
                encodings, [len(e) for e in encodings], forward, batch_size, max_tokens=self.batch_tokens
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "checkpoint_dir": str(self.folder),
            "weight_prefix": self.weight_prefix,
            "autocast": dtype_name(self.autocast) if self.autocast else None,
            "attn_implementation": self.model.config._attn_implementation,
            "attention": "bidirectional, key-padding mask only",
            "pooling": "masked mean over all real tokens (BOS and prefix included), float32",
            "dimensions": self.dimensions,
        }


class LlamaRerankHead(nn.Module):
    """Container whose state-dict keys are the original ``model.*`` + ``score.weight``."""

    def __init__(self, backbone: nn.Module, hidden: int, num_labels: int):
        super().__init__()
        self.model = backbone
        with torch.device("meta"):
            self.score = nn.Linear(hidden, num_labels, bias=False)


class LlamaRerankAdapter(AdapterBase):
    """A cross-encoder: ``score_pairs(queries, passages)`` → raw logits; also mteb's ``predict``."""

    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.device = resolve_device(cfg.get("device"))
        self.dtype = resolve_dtype(cfg.get("dtype"), self.device)
        self.max_length: int = int(cfg.get("max_length") or 8192)
        self.template = str(cfg.get("template") or RERANK_TEMPLATE)
        if "{query}" not in self.template or "{passage}" not in self.template:
            raise ConfigError(f"model.template={self.template!r} must contain {{query}} and {{passage}}")
        self.folder = resolve_checkpoint_dir(cfg)
        attn = str(cfg.get("attn_implementation") or "sdpa")
        raw, config = _load_backbone_config(self.folder, attn)
        num_labels = len(raw.get("id2label") or {"0": "LABEL_0"})
        if num_labels != 1:
            raise CheckpointError(
                f"{self.folder / 'config.json'}: id2label has {num_labels} labels; a reranker has 1"
            )
        # transformers 4.47's save_pretrained drops `temperature` (a generation parameter): the class default
        # is 1.0
        self.temperature = float(raw.get("temperature", 1.0))
        self.model = LlamaRerankHead(
            bidir.decoder_model("llama", config), int(config.hidden_size), num_labels
        )
        load_weights_strict(self.model, self.folder, dtype=self.dtype, device=self.device)
        bidir.materialize_buffers(self.model, self.device)
        self.model.eval()
        self.autocast = bidir.autocast_dtype(cfg.get("autocast"), self.device)
        self.tokenizer = bidir.load_tokenizer(self.folder)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw logits [B] for one padded batch."""
        with bidir.inference_context(self.device, self.autocast):
            hidden = bidir.hidden_states(self.model.model, input_ids, attention_mask)
            pooled = bidir.masked_mean(hidden, attention_mask)
            scores = pooled @ self.model.score.weight.to(torch.float32).T
        return scores[:, 0] / self.temperature

    def score_pairs(
        self, queries: list[str], passages: list[str], *, batch_size: int | None = None
    ) -> np.ndarray:
        """One raw logit per (queries[i], passages[i]), float32, in input order."""
        if len(queries) != len(passages):
            raise ValueError(f"score_pairs: {len(queries)} queries but {len(passages)} passages")
        batch_size = batch_size or self.batch_size
        pad_id = _pad_id(self.tokenizer)
        out = np.zeros(len(queries), dtype=np.float32)

        def forward(rows: list[list[int]]) -> torch.Tensor:
            ids, mask = bidir.pad_batch(rows, pad_id, "left", self.device)
            return self.logits(ids, mask)

        for start in range(0, len(queries), TOKENIZE_CHUNK):
            end = start + TOKENIZE_CHUNK
            texts = rerank_texts(self.template, queries[start:end], passages[start:end])
            encodings = self.tokenizer(texts, max_length=self.max_length, truncation=True)["input_ids"]
            out[start : start + len(encodings)] = run_batches(
                encodings, [len(e) for e in encodings], forward, batch_size, max_tokens=self.batch_tokens
            )
        return out

    # -- mteb's CrossEncoderProtocol -------------------------------------------------------------------------
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
        task = getattr(task_metadata, "name", None) or "<none>"
        self.prefixes_used.setdefault(task, {})["pair_template"] = self.template
        return self.score_pairs(queries, passages, batch_size=kwargs.get("batch_size"))

    def model_meta_fields(self) -> dict[str, Any]:
        fields = super().model_meta_fields()
        fields.setdefault("max_tokens", self.max_length)
        fields.setdefault("n_parameters", sum(p.numel() for p in self.model.parameters()))
        fields.setdefault("framework", ["PyTorch"])
        return fields

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "autocast": dtype_name(self.autocast) if self.autocast else None,
            "max_length": self.max_length,
            "template": self.template,
            "padding_side": "left",
            "temperature": self.temperature,
            "checkpoint_dir": str(self.folder),
            "attention": "bidirectional, key-padding mask only",
            "output": "raw logit: score(masked mean of last hidden state) / temperature",
        }
