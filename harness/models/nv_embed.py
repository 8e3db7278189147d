"""NV-Embed-v1 / NV-Embed-v2, native: bidirectional Mistral + latent-attention pooling, no
``trust_remote_code``.

Loads an original checkpoint folder as it is (``config.json`` with ``text_config`` and
``latent_attention_config``, safetensors shards with ``embedding_model.*`` / ``latent_attention_model.*``
keys, the tokenizer) and computes what NVIDIA's ``NVEmbedModel.encode`` computed (see
``shared/reference/nv-models.md`` §1):

1. text = instruction prefix + text + the EOS *string* (so truncation can cut the EOS, as in the original);
   BOS is added by the tokenizer; right padding with pad = EOS;
2. bidirectional Mistral (``bidirectional.py``), last hidden state after the final RMSNorm;
3. latent attention per token: the hiddens are the queries and 512 trained latents the keys/values, then a
   GEGLU feed-forward, both with residuals (``LatentAttention`` below, keeping the original parameter names);
4. mean over the pool mask = the attention mask with its first ``len(tokenizer.tokenize(instruction))``
   positions zeroed (the original's literal rule: with the Mistral tokenizer that is BOS + the instruction,
   because the instruction's trailing space counts as a token but merges into the first text token in
   context);
5. L2 normalisation (``output_normalize``, default true).

On CUDA the original ran everything under ``torch.autocast("cuda")`` (fp16); ``autocast`` in the model config
does the same. Must not know tasks or instruction strings: it receives the resolved prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.engine.batching import run_batches
from harness.errors import CheckpointError, ConfigError
from harness.models import bidirectional as bidir
from harness.models.base import EmbeddingAdapter
from harness.models.checkpoint import load_weights_strict, read_config, resolve_checkpoint_dir

log = logging.getLogger(__name__)

#: ``LatentAttentionConfig`` class defaults: the real config.json has only {"model_type": "latent_attention"}
LATENT_DEFAULTS: dict[str, Any] = {
    "num_latents_value": 512,
    "num_cross_heads": 8,
    "output_normalize": True,
    "hidden_dim": 4096,
    "latent_dim": 4096,
    "cross_dim_head": 4096,
}
#: texts tokenised (and length-sorted) together; bounds memory on large corpora
TOKENIZE_CHUNK = 4096


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None


class _CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        # 'b n (h d) -> b h n d': heads are contiguous chunks of the inner dim; the latents are shared by the
        # batch
        q = q.view(batch, length, self.heads, -1).transpose(1, 2)
        k = k.view(1, k.shape[0], self.heads, -1).transpose(1, 2).expand(batch, -1, -1, -1)
        v = v.view(1, v.shape[0], self.heads, -1).transpose(1, 2).expand(batch, -1, -1, -1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v
        )  # scale 1/sqrt(dim_head); no mask at all
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gates = x.chunk(2, dim=-1)
        return a * torch.nn.functional.gelu(gates)  # exact (erf) GELU


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), _GEGLU(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentAttention(nn.Module):
    """NV-Embed's pooling block, per token; parameter names are the original ``latent_attention_model.*``."""

    def __init__(self, latent: Mapping[str, Any]):
        super().__init__()
        dim = int(latent["latent_dim"])
        self.latents = nn.Parameter(torch.empty(int(latent["num_latents_value"]), dim))
        attention = _CrossAttention(
            dim, int(latent["hidden_dim"]), int(latent["num_cross_heads"]), int(latent["cross_dim_head"])
        )
        self.cross_attend_blocks = nn.ModuleList(
            [
                _PreNorm(dim, attention, context_dim=int(latent["hidden_dim"])),
                _PreNorm(dim, _FeedForward(dim)),
            ]
        )

    def forward(self, hiddens: torch.Tensor) -> torch.Tensor:
        attend, feed = self.cross_attend_blocks
        context = attend.norm_context(self.latents)
        hiddens = attend.fn(attend.norm(hiddens), context) + hiddens
        return feed.fn(feed.norm(hiddens)) + hiddens


class NVEmbedModule(nn.Module):
    """Container whose state-dict keys are exactly the original checkpoint's keys."""

    def __init__(self, backbone: nn.Module, latent: Mapping[str, Any]):
        super().__init__()
        self.embedding_model = backbone
        with torch.device("meta"):
            self.latent_attention_model = LatentAttention(latent)


def instruction_length(tokenizer: Any, prefix: str) -> int:
    """Leading positions NV-Embed excludes from pooling: ``len(tokenizer.tokenize(prefix))``, the original's
    rule.

    Taken literally (not "find where the text starts"): the count includes the prefix's trailing space as its
    own piece, while position 0 of the sequence is BOS, so the span zeroed is BOS + the prefix's in-context
    tokens.
    """
    return len(tokenizer.tokenize(prefix)) if prefix else 0


def tokenize_texts(tokenizer: Any, texts: list[str], prefix: str, max_length: int | None) -> list[list[int]]:
    """Token ids as the original built them: prefix + text + the EOS *string*, BOS added, truncated (EOS may
    go)."""
    eos = tokenizer.eos_token
    batch = [prefix + text + eos for text in texts]
    return tokenizer(batch, max_length=max_length, truncation=True, return_token_type_ids=False)["input_ids"]


def latent_config(config: Mapping[str, Any], hidden: int, where: str) -> dict[str, Any]:
    """The latent-attention settings: config.json values over the original class defaults."""
    raw = dict(config.get("latent_attention_config") or {})
    raw.pop("model_type", None)
    latent = {**LATENT_DEFAULTS, **{k: v for k, v in raw.items() if k in LATENT_DEFAULTS}}
    if not (int(latent["latent_dim"]) == int(latent["hidden_dim"]) == hidden):
        raise CheckpointError(
            f"{where}: latent_attention_config latent_dim={latent['latent_dim']} and "
            f"hidden_dim={latent['hidden_dim']} must equal text_config.hidden_size={hidden} "
            "(the original block requires it)"
        )
    return latent


class NVEmbedAdapter(EmbeddingAdapter):
    """Config keys (``conf/model/nv-embed-v*.yaml``): path, max_length, dtype, autocast, attn_implementation,
    ..."""

    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.folder = resolve_checkpoint_dir(cfg)
        where = str(self.folder / "config.json")
        config = read_config(self.folder)
        if not isinstance(config.get("text_config"), Mapping):
            raise CheckpointError(f"{where}: no 'text_config' (not an NV-Embed checkpoint?)")
        attn = str(cfg.get("attn_implementation") or "sdpa")
        text_config = bidir.decoder_config(
            "mistral", config["text_config"], attn_implementation=attn, where=where
        )
        self.latent = latent_config(config, int(text_config.hidden_size), where)
        self.model = NVEmbedModule(bidir.decoder_model("mistral", text_config), self.latent)
        load_weights_strict(self.model, self.folder, dtype=self.dtype, device=self.device)
        bidir.materialize_buffers(self.model, self.device)
        self.model.eval()
        self.autocast = bidir.autocast_dtype(cfg.get("autocast"), self.device)

        self.tokenizer = bidir.load_tokenizer(self.folder)
        if self.tokenizer.eos_token is None:
            raise CheckpointError(
                f"{self.folder}: the tokenizer has no eos_token (NV-Embed appends it to every text)"
            )
        # as NVEmbedModel.__init__ with add_pad_token: pad = EOS, padding side from config.json ("right")
        self.padding_side = str(config.get("padding_side", "right"))
        self.mask_instruction = bool(config.get("is_mask_instruction", True)) and self.padding_side == "right"
        self.output_normalize = bool(self.latent["output_normalize"])
        self.hidden_size = int(text_config.hidden_size)
        if self.max_length is None:
            self.max_length = 4096  # NVEmbedModel.encode's default

    @property
    def embed_dim(self) -> int:
        return self.hidden_size

    def instruction_length(self, prefix: str) -> int:
        return instruction_length(self.tokenizer, prefix) if self.mask_instruction else 0

    def tokenize(self, texts: list[str], prefix: str) -> list[list[int]]:
        return tokenize_texts(self.tokenizer, texts, prefix, self.max_length)

    def forward_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_masked: int
    ) -> torch.Tensor:
        """Pooled (and normalised) embeddings for one padded batch; ``n_masked`` leading positions are not
        pooled."""
        pool_mask = attention_mask.clone()
        pool_mask[:, :n_masked] = 0
        if bool((pool_mask.sum(1) == 0).any()):
            raise ConfigError(
                f"max_length={self.max_length} leaves no token to pool after the {n_masked} instruction "
                "tokens (raise model.max_length)"
            )
        with bidir.inference_context(self.device, self.autocast):
            hidden = bidir.hidden_states(self.model.embedding_model, input_ids, attention_mask)
            tokens = self.model.latent_attention_model(hidden)
            pooled = bidir.masked_mean(tokens, pool_mask)
        return bidir.l2_normalize(pooled) if self.output_normalize else pooled

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        n_masked = self.instruction_length(prefix)
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            encodings = self.tokenize(texts[start : start + TOKENIZE_CHUNK], prefix)
            out[start : start + len(encodings)] = self.embed_ids(encodings, n_masked, batch_size)
        return out

    def embed_ids(self, encodings: list[list[int]], n_masked: int, batch_size: int) -> np.ndarray:
        """Vectors for token-id rows (``tokenize``'s output), in order: longest first in batches of at most
        ``batch_size`` rows and ``batch_tokens`` padded tokens, halved on out-of-memory."""
        pad_id = self.tokenizer.eos_token_id

        def forward(rows: list[list[int]]) -> torch.Tensor:
            ids, mask = bidir.pad_batch(rows, pad_id, self.padding_side, self.device)
            return self.forward_ids(ids, mask, n_masked)

        return run_batches(
            encodings, [len(e) for e in encodings], forward, batch_size, max_tokens=self.batch_tokens
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "checkpoint_dir": str(self.folder),
            "autocast": str(self.autocast).removeprefix("torch.") if self.autocast else None,
            "attn_implementation": self.model.embedding_model.config._attn_implementation,
            "attention": "bidirectional, key-padding mask only, no sliding window",
            "instruction_masking": "first len(tokenizer.tokenize(prefix)) positions excluded from pooling"
            if self.mask_instruction
            else "none",
            "eos_appended": "eos_token string appended to every text before truncation",
            "padding_side": self.padding_side,
            "latent_attention": dict(self.latent),
        }
