"""NV-Retriever-v1, native: bidirectional Mistral-7B, mean pooling over the tokens after the first separator.

No copy of NVIDIA's code exists, so this follows the model card (``shared/reference/nv-models.md`` §3), and
the pooling rule is tested with hand-built inputs, not against a golden fixture:

* queries are ``"{instruction}: {text}"``, documents ``"passage: {text}"`` (the instruction file holds both);
  BOS from the tokenizer, no EOS, right padding (pad = EOS when the tokenizer has none);
* bidirectional Mistral (``bidirectional.py``), last hidden state after the final RMSNorm;
* pool = the real tokens strictly AFTER the first occurrence of ``separator_token_id`` (28747, the Mistral
  ``:`` right after a word) in each sequence, i.e. the instruction (or ``passage``), BOS and the ``:`` itself
  are left out. A later ``:`` inside the text changes nothing;
* **fallback**: a sequence without the separator, or with nothing after it (truncation), is mean-pooled over
  all its real tokens, BOS included, and a warning counts such sequences. (Unverified against the original,
  which is not public: documented choice);
* L2 normalisation.

The checkpoint layout is not documented either: config.json is read at the top level (or from
``text_config``), and the weight keys may be bare ``MistralModel`` keys or carry a ``model.`` /
``embedding_model.`` prefix (the custom module is known to wrap a MistralModel under ``.model``); anything
else is a CheckpointError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from harness.engine.batching import run_batches
from harness.engine.device import dtype_name
from harness.errors import CheckpointError, ConfigError
from harness.models import bidirectional as bidir
from harness.models.base import EmbeddingAdapter
from harness.models.checkpoint import (
    checkpoint_shapes,
    detect_prefix,
    load_weights_strict,
    read_config,
    resolve_checkpoint_dir,
)

log = logging.getLogger(__name__)

MISTRAL_COLON_ID = 28747
WEIGHT_PREFIXES = ("model.", "", "embedding_model.")
TOKENIZE_CHUNK = 4096


def separator_pool_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, separator_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooling mask of NV-Retriever and which rows fell back.

    Row i pools the real tokens strictly after the first real ``separator_id``; when there is none, or nothing
    real follows it, row i pools all its real tokens (``fallback[i]`` is True). Works for either padding side.
    """
    real = attention_mask.bool()
    is_sep = (input_ids == separator_id) & real
    # cumulative count of separators seen up to and including each position: > 0 from the first one on
    seen = is_sep.long().cumsum(dim=1)
    after_first = (seen > 0) & ~(is_sep & (seen == 1))
    pool = after_first & real
    fallback = pool.sum(dim=1) == 0
    pool = torch.where(fallback[:, None], real, pool)
    return pool.to(attention_mask.dtype), fallback


class NVRetrieverAdapter(EmbeddingAdapter):
    """Config keys (``conf/model/nv-retriever-v1.yaml``): path, max_length, separator_token_id, dtype, ..."""

    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.folder = resolve_checkpoint_dir(cfg)
        where = str(self.folder / "config.json")
        raw = read_config(self.folder)
        text = raw.get("text_config") if isinstance(raw.get("text_config"), Mapping) else raw
        attn = str(cfg.get("attn_implementation") or "sdpa")
        config = bidir.decoder_config("mistral", text, attn_implementation=attn, where=where)
        self.model = bidir.decoder_model("mistral", config)
        self.weight_prefix = detect_prefix(
            checkpoint_shapes(self.folder), "embed_tokens.weight", WEIGHT_PREFIXES
        )
        load_weights_strict(
            self.model, self.folder, dtype=self.dtype, device=self.device, prefix=self.weight_prefix
        )
        bidir.materialize_buffers(self.model, self.device)
        self.model.eval()
        self.autocast = bidir.autocast_dtype(cfg.get("autocast"), self.device)
        self.tokenizer = bidir.load_tokenizer(self.folder)
        self.hidden_size = int(config.hidden_size)
        sep = cfg.get("separator_token_id", MISTRAL_COLON_ID)
        if sep is None or not 0 <= int(sep) < int(config.vocab_size):
            raise ConfigError(
                f"model.separator_token_id={sep!r}: must be a token id below vocab_size {config.vocab_size}"
            )
        self.separator_id = int(sep)
        piece = self.tokenizer.convert_ids_to_tokens(self.separator_id)
        if piece != ":":
            log.warning("separator_token_id=%d is %r in this tokenizer, not ':'", self.separator_id, piece)
        if self.max_length is None:
            self.max_length = 512

    @property
    def embed_dim(self) -> int:
        return self.hidden_size

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        mask, fallback = separator_pool_mask(input_ids, attention_mask, self.separator_id)
        vectors = bidir.masked_mean(hidden, mask)
        return (bidir.l2_normalize(vectors) if self.normalize else vectors), int(fallback.sum())

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        if pad_id is None:
            raise CheckpointError(f"{self.folder}: the tokenizer has neither a pad nor an eos token")
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        fallbacks = 0

        def forward(rows: list[list[int]]) -> torch.Tensor:
            nonlocal fallbacks
            ids, mask = bidir.pad_batch(rows, int(pad_id), "right", self.device)
            with bidir.inference_context(self.device, self.autocast):
                hidden = bidir.hidden_states(self.model, ids, mask)
                vectors, n_fallback = self.pool(hidden, ids, mask)
            fallbacks += n_fallback  # counted once a batch has fitted (an OOM raises before this line)
            return vectors

        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = [prefix + text for text in texts[start : start + TOKENIZE_CHUNK]]
            encodings = self.tokenizer(chunk, max_length=self.max_length, truncation=True)["input_ids"]
            out[start : start + len(encodings)] = run_batches(
                encodings, [len(e) for e in encodings], forward, batch_size, max_tokens=self.batch_tokens
            )
        if fallbacks:
            log.warning(
                "NV-Retriever: %d of %d %s text(s) have no token after a separator (id %d, ':'); they are "
                "mean-pooled over all tokens (prefix %r)",
                fallbacks,
                len(texts),
                role,
                self.separator_id,
                prefix,
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "checkpoint_dir": str(self.folder),
            "weight_prefix": self.weight_prefix,
            "autocast": dtype_name(self.autocast) if self.autocast else None,
            "attn_implementation": self.model.config._attn_implementation,
            "attention": "bidirectional, key-padding mask only, no sliding window",
            "pooling": f"mean over tokens after the first separator id {self.separator_id}; "
            "fallback: all real tokens (with a warning)",
            "separator_token_id": self.separator_id,
        }
