"""``load_task``: a ``conf/task`` entry (``kind: beir_local | mteb``) → mteb task objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.mteb_import import import_mteb

KINDS = ("beir_local", "mteb")


def load_task(cfg: Mapping[str, Any] | DictConfig) -> Any:
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    assert isinstance(cfg, Mapping)
    kind = cfg.get("kind")
    name = cfg.get("name")
    if not name:
        raise ConfigError("task.name is required (e.g. task.name=SciFact)")
    if kind == "beir_local":
        if not cfg.get("path"):
            raise ConfigError("task=beir_local needs task.path=<folder in BEIR layout>")
        from harness.tasks.mteb_task import build_beir_task

        return build_beir_task(
            name=str(name),
            path=str(cfg["path"]),
            split=str(cfg.get("split") or "test"),
            subset=cfg.get("subset"),
            languages=cfg.get("languages"),
            main_score=str(cfg.get("main_score") or "ndcg_at_10"),
            use_mteb_metadata=cfg.get("use_mteb_metadata", "auto"),
            allow_empty_documents=bool(cfg.get("allow_empty_documents", False)),
            result_split=cfg.get("result_split"),
        )
    if kind == "mteb":
        return get_mteb_task(
            str(name), splits=cfg.get("splits"), subsets=cfg.get("subsets"), languages=cfg.get("languages")
        )
    raise ConfigError(f"task.kind={kind!r}: expected one of {KINDS}")


def get_mteb_task(
    name: str,
    splits: list[str] | None = None,
    subsets: list[str] | None = None,
    languages: list[str] | None = None,
) -> Any:
    mteb = import_mteb()
    try:
        return mteb.get_task(name, eval_splits=splits, hf_subsets=subsets, languages=languages)
    except KeyError as exc:
        raise ConfigError(f"unknown mteb task {name!r}: {exc.args[0] if exc.args else exc}") from None
