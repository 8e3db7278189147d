"""CPU memory allocator settings for the encode loop: the one process-wide knob that changes speed alone.

PyTorch's CPU tensors come from glibc ``malloc``; every large activation (a MiniLM batch's feed-forward output
is 50 MB) is mapped fresh from the kernel and unmapped on free, so each forward pass page-faults its way
through hundreds of megabytes again (millions of minor faults per corpus; a quarter of a CPU run was system
time). Raising glibc's mmap and trim thresholds keeps those blocks in the heap for reuse: measured on the
2-core machine, encoding ran 7-15% faster with system time near zero (benchmarks/README.md). Results are
bit-identical (only where memory comes from changes). Must not know anything about models or tasks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's mmap/trim thresholds once per process (Linux with glibc only; ``HARNESS_MALLOC_TUNING=0``
    turns it off). Returns whether the settings were applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("HARNESS_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    _done = ok
    log.debug("glibc malloc thresholds raised: %s", ok)
    return ok
