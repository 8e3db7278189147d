"""The AMX score-and-threshold kernel (``kernels/bf16_threshold.c``): built with the system C compiler on first
use, loaded with ctypes, run on as many threads as torch uses.

Why a kernel of our own: the bf16 prefilter only needs the few (document, query) pairs whose score reaches a
bound, but ``torch.mm`` writes every bf16 score to memory (20 GB for 1M documents x 10k queries) and a second
pass reads it back. Fused, the tile products run at 2-3x oneDNN's rate on the same AMX units.

Nothing here is required: without an x86 CPU with AMX, a C compiler that knows ``-mamx-bf16`` (GCC 11+, Clang
12+), a kernel that grants the tile state, or with ``HARNESS_AMX_KERNEL=0``, ``load()`` returns None (the
reason is logged once) and the search uses torch's bf16 products instead. A fresh build is checked against
torch on a small problem before it is used.

The library is built into ``kernel_dir()`` or, where that cannot be written, a private folder under the system
temporary folder; a library is loaded only from a folder that no other user can write to (owned by us or root,
not group or other writable), since anyone who can replace it runs code in our process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from harness.engine.device import cpu_flags as _cpu_flags

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

SOURCE = Path(__file__).with_name("kernels") / "bf16_threshold.c"
FLAGS = ["-O2", "-mavx512f", "-mavx512bw", "-mamx-tile", "-mamx-bf16", "-shared", "-fPIC"]
_ROWS = 32  # documents and queries per kernel step (two 16-row tiles each)
_DIMS = 32  # bf16 values per tile row
_DOC_BLOCK, _QUERY_BLOCK = 1024, 256  # fit L2 together; measured best of a sweep on the benchmark machine


@dataclass
class PackedQueries:
    """Queries in the kernel's layout: ``[K/2, m]`` int32 pairs, padded to 32 queries and 32 dimensions."""

    pack: torch.Tensor
    n: int  # queries before padding


class ThresholdKernel:
    def __init__(self, lib: ctypes.CDLL):
        fn = lib.harness_bf16_hits
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
        self._fn = fn
        convert = lib.harness_to_bf16
        convert.restype = None
        convert.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self._convert = convert
        self._pool: ThreadPoolExecutor | None = None
        self._threads = 0
        self._pool_lock = threading.Lock()
        _kernels.add(self)

    @staticmethod
    def pack_queries(q16: torch.Tensor) -> PackedQueries:
        m, dim = q16.shape
        padded = torch.zeros((_round_up(m, _ROWS), _round_up(dim, _DIMS)), dtype=torch.bfloat16)
        padded[:m, :dim] = q16
        return PackedQueries(padded.view(torch.int32).t().contiguous(), m)

    @staticmethod
    def pad_docs(d: torch.Tensor) -> torch.Tensor:
        """``d`` in bf16, rows and dimensions zero-padded for the kernel (zero dimensions add nothing to a score;
        zero rows are dropped from the hits)."""
        n, dim = d.shape
        out = torch.empty((_round_up(n, _ROWS), _round_up(dim, _DIMS)), dtype=torch.bfloat16)
        out[:n, :dim] = d
        if out.shape[0] > n:
            out[n:] = 0
        if out.shape[1] > dim:
            out[:n, dim:] = 0
        return out

    def to_bf16(self, d: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """``pad_docs(d)`` for float32 ``d``, with the largest row norm of ``d`` and of its bf16 rounding residual
        (rounded up), in one pass. The norms are NaN or inf where ``d`` has a NaN or inf."""
        d = d.float().contiguous()
        n, dim = d.shape
        out = torch.empty((_round_up(n, _ROWS), _round_up(dim, _DIMS)), dtype=torch.bfloat16)
        if out.shape[0] > n:
            out[n:] = 0
        pieces = [(s, min(s + 4096, n)) for s in range(0, n, 4096)]
        stats = torch.zeros((max(1, len(pieces)), 2), dtype=torch.float64)

        def run(i: int) -> None:
            r0, r1 = pieces[i]
            self._convert(d.data_ptr(), dim, r0, r1, out.data_ptr(), out.shape[1], stats[i].data_ptr())

        self._map(run, list(range(len(pieces))))
        # double sums of exact squares: 1e-9 relative covers their rounding many times over (NaN propagates)
        norm, err = (math.sqrt(float(v) * (1 + 1e-9)) for v in stats.max(dim=0).values)
        return out, norm, err

    def hits(
        self, docs: torch.Tensor, queries: PackedQueries, lower: torch.Tensor, n_docs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, document) int64 pairs whose fp32-accumulated bf16 score is ``>= lower[query]``, in no
        particular order. ``docs``: from ``pad_docs``; ``n_docs``: its rows before padding."""
        return self._call(docs, queries, lower, n_docs, None)

    def group_max(self, docs: torch.Tensor, queries: PackedQueries, n_docs: int) -> torch.Tensor:
        """``[n_docs // 32, queries]`` float32: each query's largest bf16 score in each whole group of 32
        documents."""
        out = torch.empty((docs.shape[0] // _ROWS, queries.pack.shape[1]), dtype=torch.float32)
        self._call(docs, queries, torch.full((queries.n,), float("inf")), n_docs, out)
        return out[: n_docs // _ROWS, : queries.n]

    def _call(
        self,
        docs: torch.Tensor,
        queries: PackedQueries,
        lower: torch.Tensor,
        n_docs: int,
        group_max: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m_pad = queries.pack.shape[1]
        k_pad = queries.pack.shape[0] * 2
        if docs.dtype != torch.bfloat16 or docs.shape[1] != k_pad or not docs.is_contiguous():
            raise ValueError(f"documents {tuple(docs.shape)} {docs.dtype} do not match packed queries (K={k_pad})")
        bound = torch.full((m_pad,), float("inf"), dtype=torch.float32)  # padded queries never hit
        bound[: queries.n] = lower.float()
        gmax = group_max.data_ptr() if group_max is not None else None
        # pieces of _DOC_BLOCK documents handed to the threads as they come free: a thread slowed by the shard
        # reader (or a busy neighbour) does not hold the others up
        ranges = [(s, min(s + _DOC_BLOCK, docs.shape[0])) for s in range(0, docs.shape[0], _DOC_BLOCK)]
        parts = self._map(lambda r: self._run(docs, queries.pack, bound, m_pad, k_pad, *r, gmax), ranges)
        query = torch.cat([p[0] for p in parts]).to(torch.int64)
        doc = torch.cat([p[1] for p in parts]).to(torch.int64)
        if docs.shape[0] > n_docs:
            keep = doc < n_docs
            query, doc = query[keep], doc[keep]
        return query, doc

    def _run(
        self, docs: torch.Tensor, pack: torch.Tensor, bound: torch.Tensor, m: int, k: int, d0: int, d1: int,
        gmax: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cap = max(1 << 12, m)
        while True:
            out_doc = torch.empty(cap, dtype=torch.int32)
            out_query = torch.empty(cap, dtype=torch.int32)
            count = self._fn(
                docs.data_ptr(), pack.data_ptr(), bound.data_ptr(), m, k, d0, d1, _DOC_BLOCK, _QUERY_BLOCK, gmax,
                out_doc.data_ptr(), out_query.data_ptr(), cap,
            )
            if count <= cap:
                return out_query[:count], out_doc[:count]
            cap = count  # rare: a low bound; the same call again, with room for every hit

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        threads = torch.get_num_threads()
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        # under the lock: two searches in threads must not both make a pool, nor shut one down while the other
        # is still submitting to it (work already submitted still runs after a shutdown)
        with self._pool_lock:
            if self._pool is None or self._threads != threads:  # one pool, as wide as torch's own thread count
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="harness-amx")
                self._threads = threads
            futures = [self._pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]  # ctypes releases the GIL: the threads run in parallel

    def _forget_pool(self) -> None:
        """In a forked child: the pool's threads did not come along (and the lock may be held by one that did
        not), so the next call makes both anew."""
        self._pool_lock = threading.Lock()
        self._pool, self._threads = None, 0


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


_lock = threading.Lock()
_loaded: dict[str, tuple[ThresholdKernel | None, str | None]] = {}  # "kernel": (the kernel, or why not)
_kernels: weakref.WeakSet[ThresholdKernel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread that held it at the fork does not exist in the child
    for kernel in list(_kernels):
        kernel._forget_pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def load() -> ThresholdKernel | None:
    """The kernel, or None where it cannot run here (logged once)."""
    return _status()[0]


def unavailable_reason() -> str | None:
    """Why ``load()`` gives None on this machine (for error messages); None if it works."""
    return _status()[1]


def _status() -> tuple[ThresholdKernel | None, str | None]:
    with _lock:
        if "kernel" not in _loaded:
            try:
                kernel, reason = _load()
            except Exception as exc:  # a broken toolchain must not break a search that has a fallback
                kernel, reason = None, f"{type(exc).__name__}: {exc}"
            if kernel is None:
                log.info("AMX search kernel not used (%s); torch's bf16 products instead", reason)
            _loaded["kernel"] = (kernel, reason)
        return _loaded["kernel"]


def _load() -> tuple[ThresholdKernel | None, str | None]:
    if os.environ.get("HARNESS_AMX_KERNEL", "1") == "0":
        return None, "HARNESS_AMX_KERNEL=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"needs Linux on x86-64, not {platform.system()} {platform.machine()}"
    missing = {"amx_tile", "amx_bf16", "avx512f", "avx512bw"} - _cpu_flags()
    if missing:
        return None, f"CPU lacks {', '.join(sorted(missing))}"
    compiler = _compiler()
    if not compiler:
        return None, "no C compiler ($CC, cc, gcc, clang) found"
    path = _build(compiler)
    if isinstance(path, str):
        return None, path
    lib = ctypes.CDLL(str(path))
    if lib.harness_amx_request() != 0:
        return None, "the OS refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    kernel = ThresholdKernel(lib)
    problem = _self_check(kernel)
    if problem:
        return None, problem
    return kernel, None


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named) or named
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def kernel_dir() -> Path:
    """Where the built library is kept (``HARNESS_KERNEL_DIR``, else the user's cache folder)."""
    if os.environ.get("HARNESS_KERNEL_DIR"):
        return Path(os.environ["HARNESS_KERNEL_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "kernels"


def _private_fallback_dir() -> Path:
    # per user: the temporary folder is shared, and a library name anyone can predict must not be theirs to plant
    return Path(tempfile.gettempdir()) / f"harness-kernels-{os.getuid()}"


def _untrusted(path: Path, kind: str, follow: bool = False) -> str | None:
    """Why ``path`` is no safe place to load code from; None if it is: a ``kind`` ("folder" or "file") owned by
    us or root that neither group nor others can write to. A link is refused unless ``follow`` (then its target
    is checked): in a shared folder its owner could repoint it after the check."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    is_kind = stat.S_ISDIR(info.st_mode) if kind == "folder" else stat.S_ISREG(info.st_mode)
    if not is_kind:
        return f"{path} is not a {kind}"
    if info.st_uid not in (os.getuid(), 0):
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


class _CompileError(Exception):
    """The compiler ran and failed: no other folder would change that."""


def _build(compiler: str) -> Path | str:
    """The shared library, compiled once per source, flags and compiler version; an error string otherwise.

    Tried in ``kernel_dir()``, then in a private folder under the system temporary folder: a folder that cannot
    be made or written, or that others could write to, is passed over."""
    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError as exc:
        return f"{compiler} cannot run: {exc}"
    digest = hashlib.sha256(source + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    problems = []
    # the configured folder may be reached through a link the user made; the shared temporary folder's may not
    for directory, follow in ((kernel_dir(), True), (_private_fallback_dir(), False)):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"cannot make {directory}: {exc.strerror or exc}")
            continue
        problem = _untrusted(directory, "folder", follow)
        if problem:
            problems.append(problem)
            continue
        target = directory / f"bf16_threshold-{digest}.so"
        if os.path.lexists(target):
            problem = _untrusted(target, "file")
            if problem is None:
                return target
            problems.append(problem)
            continue
        try:
            return _compile(compiler, directory, target)
        except _CompileError as exc:
            return str(exc)
        except OSError as exc:  # a read-only or full folder: the next one may do
            problems.append(f"cannot build in {directory}: {exc.strerror or exc}")
    return "no folder to build the kernel in (" + "; ".join(problems) + ")"


def _compile(compiler: str, directory: Path, target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise _CompileError(f"{compiler} could not build {SOURCE.name}: {proc.stderr.strip()[-300:]}")
        os.chmod(tmp, 0o755)  # whatever mkstemp or the linker left: readable by all, writable by us alone
        os.replace(tmp, target)  # atomic: a concurrent build never loads half a library
        return target
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _self_check(kernel: ThresholdKernel) -> str | None:
    """Hits on a small random problem (odd sizes: the padding too) equal torch's, away from the bound."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(77, 45, generator=gen).bfloat16()
    q = torch.randn(37, 45, generator=gen).bfloat16()
    ref = q.float() @ d.float().t()
    lower = ref.median(dim=1).values
    query, doc = kernel.hits(kernel.pad_docs(d), kernel.pack_queries(q), lower, d.shape[0])
    got = torch.zeros_like(ref, dtype=torch.bool)
    got[query, doc] = True
    margin = 1e-3 * ref.abs().max()
    want = ref >= lower[:, None]
    clear = (ref - lower[:, None]).abs() > margin
    if bool((got != want)[clear].any()) or query.numel() != int(got.sum()):
        return "the built kernel disagreed with torch on its self-check (hits)"
    x = torch.randn(77, 45, generator=gen)
    x16, norm, err = kernel.to_bf16(x)
    if not torch.equal(x16, kernel.pad_docs(x.bfloat16())):
        return "the built kernel disagreed with torch on its self-check (bf16 rounding)"
    ref_err = float(torch.linalg.vector_norm(x - x.bfloat16().float(), dim=1).max())
    ref_norm = float(x.norm(dim=1).max())
    if not (ref_err * (1 - 1e-6) <= err <= ref_err * (1 + 1e-4) and ref_norm * (1 - 1e-6) <= norm <= ref_norm * 1.0001):
        return "the built kernel disagreed with torch on its self-check (norms)"
    gmax = kernel.group_max(kernel.pad_docs(d), kernel.pack_queries(q), d.shape[0])
    ref_max = ref[:, : 64].reshape(q.shape[0], 2, 32).amax(2).t()
    if gmax.shape != ref_max.shape or not torch.allclose(gmax, ref_max, atol=float(margin)):
        return "the built kernel disagreed with torch on its self-check (group maxima)"
    return None
