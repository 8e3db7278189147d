"""Bidirectional Mistral / Llama backbones built from STOCK transformers modules, and what their adapters
share.

NVIDIA's embedders and reranker are decoder LLMs run with full (non-causal) attention: every token attends to
every non-pad token, with no sliding window. Their original code subclassed the decoder and overrode its mask
building, which transformers has since rewritten: on current versions that code either crashes or, worse, runs
causally without a word. Here the stock ``MistralModel`` / ``LlamaModel`` are used unchanged, and the mask is
ours:

* we build a 4-D key-padding-only mask and pass it as ``attention_mask``. transformers returns a prepared 4-D
  mask untouched (``masking_utils._preprocess_mask_arguments``), so no causal or sliding-window mask is ever
  built;
* every layer's ``self_attn.is_causal`` is set False (SDPA would otherwise take ``is_causal=True`` whenever no
  mask reaches it) and ``config.is_causal`` is False (transformers' own bidirectional fallback), as two more
  locks;
* ``sliding_window`` is forced to None (NV-Embed's config carries Mistral's 4096, which the original ignored).

``hidden_states()`` checks the mask it passes is 4-D and padding-only; the fixture tests prove a causal or
sliding-window variant is caught. Also here: building a model on the meta device and filling it strictly from
the checkpoint, the tokenizer loader (never ``trust_remote_code``), masked mean pooling and autocast
(batching is ``harness.engine.batching.run_batches``). Must not know any model's prompts or pooling rule beyond
the masked mean.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

#: config.json keys that describe the original remote code, not the architecture
_REMOTE_CODE_KEYS = ("model_type", "auto_map", "architectures", "transformers_version", "_name_or_path")


# -- configs -------------------------------------------------------------------------------------------------
def decoder_config(
    family: str,
    raw: Mapping[str, Any],
    *,
    attn_implementation: str = "sdpa",
    where: str = "",
    drop: Sequence[str] = (),
) -> Any:
    """A stock ``MistralConfig`` / ``LlamaConfig`` from a checkpoint's (text) config, made bidirectional.

    ``raw`` is the original JSON (``text_config`` for NV-Embed, the top level for the llama_bidirec models);
    the keys that only named the remote code (and ``drop``: the family's own extras) are dropped, the rest go
    to the stock config class as they are.
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"attn_implementation={attn_implementation!r}: expected one of {ATTN_IMPLEMENTATIONS}"
        )
    kwargs = {k: v for k, v in raw.items() if k not in _REMOTE_CODE_KEYS and k not in drop}
    if family == "mistral":
        from transformers import MistralConfig as config_class
    elif family == "llama":
        from transformers import LlamaConfig as config_class
    else:
        raise ValueError(f"unknown decoder family {family!r}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in kwargs:
            raise CheckpointError(f"{where or 'config.json'}: no {key!r} in the {family} config")
    kwargs["sliding_window"] = None  # the original bidirectional models ignore it
    kwargs["use_cache"] = False
    config = config_class(**kwargs)
    config.sliding_window = None
    config.is_causal = False
    config._attn_implementation = attn_implementation
    return config


# -- building and loading ------------------------------------------------------------------------------------
def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module without allocating or initialising weights (a 7B model builds in milliseconds)."""
    with torch.device("meta"):
        return factory()


def decoder_model(family: str, config: Any) -> nn.Module:
    """A stock ``MistralModel`` / ``LlamaModel`` on the meta device, made bidirectional."""
    if family == "mistral":
        from transformers import MistralModel as model_class
    else:
        from transformers import LlamaModel as model_class
    model = build_on_meta(lambda: model_class(config))
    make_bidirectional(model)
    return model


def make_bidirectional(model: nn.Module) -> None:
    """Non-causal attention in every layer (the 4-D mask does the real work; these are extra locks)."""
    model.config.is_causal = False
    model.config.sliding_window = None
    for layer in model.layers:
        layer.self_attn.is_causal = False


def materialize_buffers(model: nn.Module, device: torch.device) -> None:
    """Recompute the non-persistent buffers (RoPE frequencies) that a meta-built model lacks, in float32."""
    for name, child in list(model.named_modules()):
        if name.endswith("rotary_emb") and any(b.is_meta for b in child.buffers()):
            fresh = type(child)(config=child.config).to(device)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], fresh)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise CheckpointError(f"buffers left uninitialised: {left}")


# -- the mask ------------------------------------------------------------------------------------------------
def key_padding_mask(
    attention_mask: torch.Tensor, dtype: torch.dtype, attn_implementation: str
) -> torch.Tensor:
    """The 4-D mask ``[B, 1, L, L]``: query i may attend to key j iff j is not padding. No causal part, no
    window.

    SDPA takes a boolean mask (True = attend); eager attention adds a float mask (0 or the dtype's minimum).
    Pad query rows still attend to the real tokens, as in the original (their outputs are never pooled).
    """
    batch, length = attention_mask.shape
    keep = attention_mask.bool()[:, None, None, :].expand(batch, 1, length, length)
    if attn_implementation == "sdpa":
        return keep
    return torch.zeros((), dtype=dtype, device=attention_mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``last_hidden_state`` of a stock decoder run bidirectionally (final norm applied)."""
    impl = model.config._attn_implementation
    mask = key_padding_mask(attention_mask, model.embed_tokens.weight.dtype, impl)
    if mask.dim() != 4:  # a 2-D mask would let transformers build its own (causal) mask
        raise RuntimeError("the bidirectional mask must be 4-D")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[
        None, :
    ]  # arange(L), as the originals
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return out.last_hidden_state


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, L, D] over positions where ``mask`` [B, L] is 1, computed in float32."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.to(torch.float32) * weights).sum(1) / weights.sum(1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, p=2, dim=-1)


# -- running -------------------------------------------------------------------------------------------------
def autocast_dtype(value: Any, device: torch.device) -> torch.dtype | None:
    """``autocast`` config value (a dtype name, or a mapping per device type) → the CUDA autocast dtype, or
    None.

    Autocast only ever applies on CUDA: NV-Embed's original wrapped its forward in ``torch.autocast("cuda")``
    whenever CUDA was available (fp16), and nothing on CPU.
    """
    if isinstance(value, Mapping):
        value = value.get(device.type)
    if device.type != "cuda" or value in (None, "", "none", False):
        return None
    from harness.engine.device import resolve_dtype

    dtype = resolve_dtype(str(value), device)
    return None if dtype == torch.float32 else dtype


def inference_context(
    device: torch.device, autocast: torch.dtype | None
) -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if autocast is not None and device.type == "cuda":
        stack.enter_context(torch.autocast(device_type="cuda", dtype=autocast))
    return stack


def pad_batch(
    rows: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [B, L] for token-id rows, padded on ``side`` with ``pad_id``."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        if side == "right":
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        else:
            ids[i, length - len(row) :] = row
            mask[i, length - len(row) :] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


# -- tokenizers ----------------------------------------------------------------------------------------------
def load_tokenizer(folder: Path) -> Any:
    """The checkpoint's fast tokenizer, read from ``tokenizer.json`` without ``AutoTokenizer``.

    ``AutoTokenizer`` reads config.json, sees the remote-code model type (``nvembed``, ``llama_bidirec``) and
    asks for ``trust_remote_code`` (interactively!). ``tokenizer.json`` already holds the whole pipeline; the
    ``add_bos_token`` / ``add_eos_token`` flags of ``tokenizer_config.json``, which the original Llama
    tokenizer class applied on top of it, are honoured here as well.
    """
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{folder}: no tokenizer.json (a fast tokenizer file is required; convert tokenizer.model with "
            "transformers once and save it next to the weights)"
        )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"
    flags = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if "add_bos_token" in flags or "add_eos_token" in flags:
        _apply_bos_eos(
            tokenizer, bool(flags.get("add_bos_token", True)), bool(flags.get("add_eos_token", False))
        )
    return tokenizer


def _apply_bos_eos(tokenizer: Any, add_bos: bool, add_eos: bool) -> None:
    """Make the post-processor add BOS / EOS exactly as the flags say (what LlamaTokenizerFast did on
    load)."""
    probe = tokenizer("a")["input_ids"]
    has_bos = bool(probe) and probe[0] == tokenizer.bos_token_id
    has_eos = bool(probe) and probe[-1] == tokenizer.eos_token_id
    if has_bos == add_bos and has_eos == add_eos:
        return
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (f" {eos}:0" if add_eos else "")
    pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
    specials = [
        (t, i)
        for t, i, on in ((bos, tokenizer.bos_token_id, add_bos), (eos, tokenizer.eos_token_id, add_eos))
        if on
    ]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=specials
    )
