"""Evaluation harness for retrieval embedding models.

Python API: ``harness.load_model(name, **overrides)`` returns the adapter configured by ``conf/model/<name>.yaml``.
The command line (``harness run|report|submit|regress|compare``) lives in ``harness.cli``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(name: str, **overrides: Any) -> Any:
    """Load the adapter for ``conf/model/<name>.yaml``; ``overrides`` are that config's keys (path, device, ...)."""
    from harness.models.registry import load_model as _load_model

    return _load_model(name, **overrides)


__all__ = ["__version__", "load_model"]
