"""``model.loader=remote``: NVIDIA's own ``trust_remote_code`` implementation, for users who want the original
code.

That code only works on the transformers version it was written for (NV-Embed: 4.42.4; llama_bidirec: 4.47.1,
the last versions before the APIs it uses changed; on newer versions it crashes or, for the llama models,
silently runs causally). So this adapter checks the installed transformers against the model config's
``remote_code.transformers`` specifier FIRST and refuses to load otherwise, with the way out in the message
(the native loader, or a separate environment with that version). Must not reimplement anything: it calls the
original ``encode`` / forward as NVIDIA's model cards show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from harness.errors import ConfigError
from harness.models.base import EmbeddingAdapter

#: how the original code is called, per ``remote_code.call``
CALLS = ("nv_embed", "nv_retriever", "llama_embed")


def check_transformers(spec: str | None, model: str, native_loader: str | None) -> str:
    """Raise a ConfigError unless the installed transformers satisfies ``spec``; return the installed
    version."""
    import transformers
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    installed = transformers.__version__
    if not spec:
        raise ConfigError(
            f"model.loader=remote for {model}: the config has no remote_code.transformers requirement, "
            "so the original code's transformers version is unknown; refusing to run it unchecked"
        )
    try:
        wanted = SpecifierSet(spec if spec[0] in "<>=!~" else f"=={spec}")
    except InvalidSpecifier as exc:
        raise ConfigError(
            f"model.remote_code.transformers={spec!r} is not a version specifier: {exc}"
        ) from None
    if installed not in wanted:
        native = f"use the native adapter (model.loader={native_loader}), or " if native_loader else ""
        raise ConfigError(
            f"model.loader=remote for {model} runs NVIDIA's trust_remote_code implementation, which needs "
            f"transformers{wanted}; this environment has transformers {installed}, where that code crashes "
            f"or computes something else. {native}install transformers{wanted} in a separate environment."
        )
    return installed


class RemoteCodeAdapter(EmbeddingAdapter):
    """The original HF implementation, behind the same ``embed`` contract as the native adapters."""

    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        remote = dict(cfg.get("remote_code") or {})
        self.call = str(remote.get("call") or "")
        self.transformers_version = check_transformers(
            remote.get("transformers"), self.name, remote.get("native_loader")
        )
        if self.call not in CALLS:
            raise ConfigError(f"model.remote_code.call={self.call!r}: expected one of {CALLS}")
        from transformers import AutoModel, AutoTokenizer

        source = str(cfg.get("path") or self.name)
        revision = None if cfg.get("path") else self.revision
        self.model = AutoModel.from_pretrained(
            source, revision=revision, trust_remote_code=True, torch_dtype=self.dtype
        )
        self.model.to(self.device).eval()
        self.tokenizer = None
        if self.call != "nv_embed":  # NVEmbedModel carries its own tokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=True)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = self.max_length or 512

    @property
    def embed_dim(self) -> int | None:
        config = self.model.config
        return int(getattr(config, "hidden_size", 0) or config.text_config.hidden_size)

    def embed(self, texts: list[str], *, prefix: str, role: str, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            with torch.inference_mode():
                if (
                    self.call == "nv_embed"
                ):  # the README usage: instruction passed separately, EOS appended inside
                    vectors = self.model.encode(batch, instruction=prefix, max_length=self.max_length)
                else:
                    enc = self.tokenizer(
                        [prefix + t for t in batch],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    ).to(self.device)
                    result = self.model(**enc)
                    if self.call == "llama_embed":  # the card: masked mean of last_hidden_state
                        hidden = result.last_hidden_state
                        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                        vectors = (hidden * mask).sum(1) / mask.sum(1)
                    else:  # NV-Retriever's custom module returns the pooled embeddings
                        vectors = result if isinstance(result, torch.Tensor) else result[0]
            out.append(torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim or 0), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "remote_code": self.call, "transformers": self.transformers_version}
