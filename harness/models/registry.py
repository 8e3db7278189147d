"""Where a model is registered: ``loader`` (a key in every ``conf/model/*.yaml``) → adapter class.

Adding a model of an existing family is a YAML file under ``conf/model/``; adding a family is one module here plus
one line in ``LOADERS``. Classes are imported lazily so that loading one family never imports another's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import group_options, load_group_entry
from harness.errors import ConfigError

LOADERS: dict[str, str] = {
    "sentence_transformer": "harness.models.sentence_transformer:SentenceTransformerAdapter",
    "hash": "harness.models.hash_encoder:HashEncoder",
    "nv_embed": "harness.models.nv_embed:NVEmbedAdapter",
    "nv_retriever": "harness.models.nv_retriever:NVRetrieverAdapter",
    "llama_embed": "harness.models.llama_bidirec:LlamaEmbedAdapter",
    "llama_rerank": "harness.models.llama_bidirec:LlamaRerankAdapter",
    "remote": "harness.models.remote_code:RemoteCodeAdapter",
    "cross_encoder": "harness.models.cross_encoder:CrossEncoderAdapter",
    "bm25": "harness.models.bm25:BM25Search",
    "pipeline": "harness.models.pipeline:RerankPipeline",
}

#: keys every adapter understands even when its YAML does not set them
RUNTIME_KEYS = ("device", "dtype", "batch_size", "show_progress")


def adapter_class(loader: str) -> type:
    if loader not in LOADERS:
        raise ConfigError(f"model.loader={loader!r} is not registered. Known loaders: {', '.join(sorted(LOADERS))}")
    module_name, _, class_name = LOADERS[loader].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_adapter(cfg: Mapping[str, Any] | DictConfig) -> Any:
    """Instantiate the adapter for a resolved model config."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    assert isinstance(cfg, Mapping)
    for key in ("name", "loader"):
        if not cfg.get(key):
            raise ConfigError(f"model config lacks {key!r}: {dict(cfg)}")
    return adapter_class(str(cfg["loader"]))(cfg)


def load_model(name: str, **overrides: Any) -> Any:
    """``load_model("nv-embed-v2", path="/ckpt", device="cuda")``: the adapter for ``conf/model/<name>.yaml``."""
    if name not in group_options("model"):
        raise ConfigError(f"unknown model {name!r}. Known models: {', '.join(group_options('model'))}")
    runtime = {k: overrides.pop(k) for k in list(overrides) if k in RUNTIME_KEYS}
    cfg = load_group_entry("model", name, overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.update(runtime)
    return build_adapter(container)
