"""Shared test setup: offline hub, mteb's cache in a temp folder, and the paths tests read."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# before anything imports mteb (it creates its cache folder at import) or reaches for the hub
os.environ.setdefault("MTEB_CACHE", tempfile.mkdtemp(prefix="mteb-cache-"))
# a fresh embedding cache per session: a rerun must encode again, never read vectors a previous run left
os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="harness-embeddings-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
SCIFACT = PROJECT_ROOT / "harness" / "tasks" / "data" / "scifact"
XQUAD = SHARED / "data" / "beir"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"tests need the shared folder beside the project: {SHARED}"
    return SHARED


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``harness …`` in a fresh interpreter, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd or PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
