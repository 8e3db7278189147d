"""Fixtures for the report tests: where the reference result files are, and running a command in-process."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MTEB_CACHE", tempfile.mkdtemp(prefix="mteb-cache-"))  # before mteb is imported

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REF = SHARED / "reference"
MTEB_RESULTS = REF / "mteb-results"
MINILM_REV = "8b3219a92973c328a8e22fadcfa821b5dc75636a"


@pytest.fixture(scope="session")
def mteb_results() -> Path:
    assert MTEB_RESULTS.is_dir(), f"tests need {MTEB_RESULTS}"
    return MTEB_RESULTS


@pytest.fixture(scope="session")
def published() -> dict[str, Any]:
    return json.loads((REF / "published-mteb-eng-v1.json").read_text(encoding="utf-8"))


@pytest.fixture
def run_command(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """`run_command("report", *argv)` -> (exit code, stdout) of `harness <command>` run in-process."""
    from harness.report import commands

    def run(command: str, *argv: Any) -> tuple[int, str]:
        capsys.readouterr()
        rc = getattr(commands, f"{command}_main")([str(a) for a in argv])
        return rc, capsys.readouterr().out

    return run


@pytest.fixture
def report_json(run_command: Callable[..., tuple[int, str]]) -> Callable[..., dict[str, Any]]:
    """`report_json(*paths, "--benchmark", ...)` -> the parsed `--format json` output."""

    def run(*argv: Any) -> dict[str, Any]:
        rc, out = run_command("report", *argv, "--format", "json")
        assert rc == 0
        return json.loads(out)

    return run
