"""Length-sorted batching with CUDA out-of-memory back-off: the one batching loop adapters call from ``embed``.

Owns: the order in which items are fed to a model (longest first, so an out-of-memory error shows up in the
first batch instead of hours in), the batch size that actually fits (halved on OOM and remembered), the return
to input order, and per-batch progress reports. Must not know what an item is (a string, a list of token ids, a
pair) nor how the model pads, pools or prompts: that is the adapter's ``forward_fn``.

API, for adapters (``harness/models/*.py``)::

    from harness.engine.batching import run_batches

    def embed(self, texts, *, prefix, role, batch_size):
        encodings = self.tokenize(texts, prefix)                   # any per-item objects
        return run_batches(
            encodings,
            lengths=[len(e) for e in encodings],                   # token counts: sort key and tokens/s
            forward_fn=lambda rows: self.forward_rows(rows),       # list of items -> [len(rows), dim] array/tensor
            batch_size=batch_size,
            max_tokens=None,                                       # or a padded-token budget per batch
        )

``forward_fn`` is called with the items of one batch in length order (longest first) and returns one vector per
item (numpy or torch, any float dtype; torch tensors are moved to the CPU here), or ``(vectors, tokens)`` when it
knows the batch's real token count (after truncation) better than ``lengths`` does. The result is float32
``[len(items), dim]`` in input order. On ``torch.OutOfMemoryError`` (or a RuntimeError that says "out of
memory") the batch is retried at half the size, down to one item; the size that worked is kept for the rest
of the call and recorded in ``BatchStats`` (pass ``stats=``) and in ``last_working_batch_size``. A batch of
one that still runs out of memory re-raises the error.

With ``max_tokens`` set, batches are cut by padded tokens (``rows × longest row`` ≤ ``max_tokens``, and at most
``batch_size`` rows): long texts go in small batches and short ones in large batches, which is what keeps a GPU
busy on real corpora (see ``shared/reference/gpu-anchors.md``).

Progress: the encode engine (``harness/engine/encode.py``) installs a reporter with ``report_progress``;
every finished batch calls it with (items, tokens), so bars advance per batch whichever adapter runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

#: (items done, tokens done) -> None; installed by the encode engine around an adapter's ``embed`` call
ProgressFn = Callable[[int, int], None]
_progress: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar("harness_batch_progress", default=None)

#: the batch size the last ``run_batches`` call ended with (after any OOM halving), for logs and provenance
last_working_batch_size: int | None = None


@dataclass
class BatchStats:
    """What a ``run_batches`` call did: the sizes asked for and used, the OOM retries, the work done."""

    requested_batch_size: int = 0
    working_batch_size: int = 0
    oom_retries: int = 0
    batches: int = 0
    items: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    halvings: list[int] = field(default_factory=list)


@contextlib.contextmanager
def report_progress(fn: ProgressFn | None) -> Iterator[None]:
    """Within the block, every batch that ``run_batches`` finishes calls ``fn(items, tokens)``."""
    token = _progress.set(fn)
    try:
        yield
    finally:
        _progress.reset(token)


def progress_reporter() -> ProgressFn | None:
    """The reporter installed by ``report_progress`` (adapters with their own loop may call it per batch)."""
    return _progress.get()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or MPS/XPU) out-of-memory, whichever way the backend spells it."""
    oom_type = getattr(__import__("torch"), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices longest first; equal lengths keep input order (stable), so the order is reproducible."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def plan_batches(sorted_lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[int]:
    """Batch sizes for lengths already sorted longest first: ``batch_size`` rows, or fewer under a padded-token
    budget (the first row of each batch is its longest)."""
    sizes: list[int] = []
    start, n = 0, len(sorted_lengths)
    while start < n:
        size = min(batch_size, n - start)
        if max_tokens:
            longest = max(int(sorted_lengths[start]), 1)
            size = max(1, min(size, max_tokens // longest))
        sizes.append(size)
        start += size
    return sizes


def _to_numpy(vectors: Any) -> np.ndarray:
    if hasattr(vectors, "detach"):  # a torch tensor, possibly on a GPU and in bf16
        vectors = vectors.detach().float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)


def run_batches(
    items: Sequence[T],
    lengths: Sequence[int] | None,
    forward_fn: Callable[[list[T]], Any],
    batch_size: int,
    *,
    max_tokens: int | None = None,
    stats: BatchStats | None = None,
    on_oom: Callable[[], None] | None = None,
) -> np.ndarray:
    """Vectors for ``items`` in input order, computed longest first in batches that fit (see the module doc).

    ``lengths``: the sort key and token count per item (None: input order, no token accounting).
    ``on_oom``: called after an out-of-memory error, before the retry (default: ``torch.cuda.empty_cache``).
    """
    global last_working_batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stats = stats if stats is not None else BatchStats()
    stats.requested_batch_size = stats.working_batch_size = batch_size
    n = len(items)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    order = length_order(lengths) if lengths is not None else np.arange(n)
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order] if lengths is not None else None
    progress = _progress.get()
    out: np.ndarray | None = None
    current = batch_size
    budget = max_tokens
    start = 0
    while start < n:
        size = min(current, n - start)
        if budget and sorted_lengths is not None:
            size = max(1, min(size, budget // max(int(sorted_lengths[start]), 1)))
        index = order[start : start + size]
        reported: int | None = None
        try:
            output = forward_fn([items[i] for i in index])
            if isinstance(output, tuple):
                output, reported = output
            vectors = _to_numpy(output)
        except Exception as exc:
            if not is_out_of_memory(exc) or size == 1:
                raise
            vectors = None
        if vectors is None:
            # halve and retry this very batch; keep the smaller size (the longest texts come first, so what
            # fits now fits for the rest). Outside the except block, so the failed batch's tensors are freed.
            current = max(1, size // 2)
            if budget:
                budget = max(1, budget // 2)
            stats.oom_retries += 1
            stats.halvings.append(current)
            log.warning("out of memory at batch size %d: retrying at %d", size, current)
            (on_oom or _empty_cuda_cache)()
            continue
        if vectors.shape[0] != size:
            raise ValueError(f"forward_fn returned {vectors.shape[0]} vectors for a batch of {size} items")
        if out is None:
            out = np.empty((n, *vectors.shape[1:]), dtype=np.float32)
        out[index] = vectors
        if reported is not None:
            tokens = int(reported)
        else:
            tokens = int(sorted_lengths[start : start + size].sum()) if sorted_lengths is not None else 0
        stats.batches += 1
        stats.items += size
        stats.tokens += tokens
        stats.padded_tokens += int(sorted_lengths[start]) * size if sorted_lengths is not None else 0
        stats.working_batch_size = current
        if progress is not None:
            progress(size, tokens)
        start += size
    last_working_batch_size = stats.working_batch_size
    assert out is not None
    return out


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
