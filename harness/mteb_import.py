"""The one place that imports mteb. mteb creates a result cache folder at import time; point it inside the
project (or wherever MTEB_CACHE says) instead of the user's home, and keep mteb off the import path of
models/ and engine/, which must run where mteb is not installed (the GPU machines)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType


def import_mteb() -> ModuleType:
    os.environ.setdefault("MTEB_CACHE", str(Path.cwd() / ".cache" / "mteb"))
    import mteb

    return mteb
