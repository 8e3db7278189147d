"""The encode engine: which texts are encoded, where, in what order, and whether at all.

Owns: the plan of one encode call (texts sorted longest first, cut into shards of ``shard_rows``), the cache
lookup (shards already on disk are not encoded again), the split of the remaining shards across ranks and
their gathering on rank 0, the progress bar (texts/s, tokens/s, ETA) and the record of what was done.
Must not know what a text means, which model runs or how it pads: the caller passes ``embed_fn`` (texts →
vectors) and the key fields that identify the vectors (``EmbeddingAdapter.vector_key_fields``).

Row order: texts are sorted by character length (longest first), ties by text digest. The order depends only
on the set of texts, so the same corpus met in another order (another task, another run) maps to the same
cache entry, and each shard holds texts of similar length, which keeps padding low. ``EncodedTexts`` maps the
shards back to the caller's order (``dense()``) or hands them out one at a time (``shards()``), which is how
the streaming search reads a corpus larger than memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.engine.batching import report_progress
from harness.engine.cache import CorruptShardError, EmbeddingCache, text_digests
from harness.engine.distributed import DistContext, context

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]
DEFAULT_SHARD_ROWS = 4096


@dataclass
class EngineSettings:
    """``cache_dir`` (None: no cache); ``cache_roles``: which roles are cached (documents by default: queries are
    few and cheap); ``cache_dtype``: float32 (exact) or float16; ``shard_rows``: rows per shard (the unit of
    resume, of work split across ranks and of search streaming)."""

    cache_dir: Path | None = None
    cache_roles: tuple[str, ...] = ("document",)
    cache_dtype: str = "float32"
    shard_rows: int = DEFAULT_SHARD_ROWS
    show_progress: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EngineSettings:
        """From the run config: ``cache_dir`` and ``cache: {enabled, roles, dtype, shard_rows}``, ``show_progress``."""
        cache = dict(cfg.get("cache") or {})
        enabled = cache.get("enabled", True) and cfg.get("cache_dir")
        roles = cache.get("roles") or ["document"]
        return cls(
            cache_dir=Path(str(cfg["cache_dir"])).expanduser() if enabled else None,
            cache_roles=tuple(str(r) for r in ([roles] if isinstance(roles, str) else roles)),
            cache_dtype=str(cache.get("dtype") or "float32"),
            shard_rows=int(cache.get("shard_rows") or DEFAULT_SHARD_ROWS),
            show_progress=bool(cfg.get("show_progress", False)),
        )


@dataclass
class EncodeRecord:
    """What one encode call did (for logs, timings and tests)."""

    role: str
    texts: int
    shards: int
    shards_cached: int = 0
    shards_encoded: int = 0
    shards_corrupt: int = 0
    tokens: int = 0
    seconds: float = 0.0
    entry: str | None = None
    per_rank_shards: list[int] = field(default_factory=list)


class EncodedTexts:
    """Vectors of ``n`` texts held as shards (in the engine's row order) in the cache or in memory.

    ``order[r]`` is the caller's index of row ``r``. Reads go through the cache's checksum; a corrupt shard is
    encoded again on the spot (``reencode``), never returned.
    """

    def __init__(
        self,
        n: int,
        order: np.ndarray,
        shard_rows: int,
        entry: Any | None,
        memory: dict[int, np.ndarray],
        reencode: Callable[[int], np.ndarray] | None,
        record: EncodeRecord,
    ):
        self.n = n
        self.order = order
        self.shard_rows = shard_rows
        self.entry = entry
        self.memory = memory
        self.reencode = reencode
        self.record = record
        self.n_shards = (n + shard_rows - 1) // shard_rows

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_rows
        return start, min(self.n, start + self.shard_rows)

    def shard(self, shard: int) -> np.ndarray:
        if shard in self.memory:
            return self.memory[shard]
        if self.entry is None:
            raise KeyError(f"shard {shard} is held by another rank")
        try:
            return self.entry.read_shard(shard)
        except CorruptShardError as exc:
            self._redo(shard, exc)
            return self.entry.read_shard(shard)

    def _redo(self, shard: int, exc: CorruptShardError) -> None:
        """Encode a shard that failed its checksum again, and store it (or re-raise without a way to)."""
        if self.reencode is None:
            raise exc
        log.warning("%s", exc)
        self.record.shards_corrupt += 1
        self.entry.write_shard(shard, self.reencode(shard))

    def _shard_into(self, shard: int, out: np.ndarray) -> None:
        if shard in self.memory or self.entry is None:
            out[...] = self.shard(shard)
            return
        try:
            self.entry.read_shard_into(shard, out)
        except CorruptShardError as exc:
            self._redo(shard, exc)
            self.entry.read_shard_into(shard, out)

    def _layout(self, shard: int) -> tuple[int, np.dtype]:
        if shard in self.memory:
            return self.memory[shard].shape[1], self.memory[shard].dtype
        if self.entry is None:
            raise KeyError(f"shard {shard} is held by another rank")
        dim, dtype = self.entry.shard_layout(shard)
        if dim < 0:  # no record: the read reports (and repairs) it
            vectors = self.shard(shard)
            return vectors.shape[1], vectors.dtype
        return dim, dtype

    def shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(vectors, caller indices)`` per shard, one shard in memory at a time."""
        for s in range(self.n_shards):
            start, end = self.bounds(s)
            yield self.shard(s), self.order[start:end]

    def chunks(self, min_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive shards read into chunks of at least ``min_rows`` rows (fewer, larger matrix products).
        Cached shards are read with plain reads into the chunk's buffer, not memory-mapped and copied."""
        per_chunk = max(1, -(-int(min_rows) // self.shard_rows))
        for first in range(0, self.n_shards, per_chunk):
            group = range(first, min(self.n_shards, first + per_chunk))
            start, end = self.bounds(group[0])[0], self.bounds(group[-1])[1]
            if len(group) == 1 and (group[0] in self.memory or self.entry is None):
                yield self.shard(group[0]), self.order[start:end]
                continue
            dim, dtype = self._layout(group[0])
            buffer = np.empty((end - start, dim), dtype=dtype)
            for s in group:
                a, b = self.bounds(s)
                self._shard_into(s, buffer[a - start : b - start])
            yield buffer, self.order[start:end]

    def dense(self) -> np.ndarray:
        """float32 ``[n, dim]`` in the caller's order."""
        out: np.ndarray | None = None
        for vec, idx in self.shards():
            if out is None:
                out = np.empty((self.n, vec.shape[1]), dtype=np.float32)
            out[idx] = vec
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class _Progress:
    """A tqdm bar over texts, with tokens/s when the adapter reports tokens per batch."""

    def __init__(self, total: int, desc: str, enabled: bool, initial_note: str = ""):
        self.bar = None
        self.tokens = 0
        self.start = time.perf_counter()
        self.batch_items = 0
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True, mininterval=0.5)
            if initial_note:
                self.bar.set_postfix_str(initial_note)

    def update(self, items: int, tokens: int) -> None:
        self.batch_items += items
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(items)
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            if self.tokens:
                self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)

    def shard_done(self, items: int) -> None:
        """Account a shard whose adapter did not report per batch."""
        if self.batch_items < items:
            self.update(items - self.batch_items, 0)
        self.batch_items = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EncodeEngine:
    """Encodes through the cache, across ranks, with progress. One engine per run; adapters hold it."""

    def __init__(self, settings: EngineSettings | None = None, dist: DistContext | None = None):
        self.settings = settings or EngineSettings()
        self.dist = dist
        self.cache = (
            EmbeddingCache(self.settings.cache_dir, self.settings.cache_dtype) if self.settings.cache_dir else None
        )
        self.records: list[EncodeRecord] = []

    @property
    def ctx(self) -> DistContext:
        return self.dist or context()

    def encode(
        self,
        embed_fn: EmbedFn,
        texts: Sequence[str],
        *,
        key: Mapping[str, Any],
        role: str,
        label: str = "model",
        cache: bool | None = None,
    ) -> EncodedTexts:
        """Vectors for ``texts``: complete on rank 0 (``encode_dense`` gives every rank all of them).

        ``key``: the fields that identify the vectors (model description, role, prefix); ``cache``: override the
        settings' role rule (None: cache when ``role`` is in ``cache_roles``).
        """
        start_time = time.perf_counter()
        ctx = self.ctx
        texts = list(texts)
        n = len(texts)
        shard_rows = max(1, int(self.settings.shard_rows))
        digests = text_digests(texts)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
        tie = np.frombuffer(digests.tobytes(), dtype=">u8").reshape(n, 2)[:, 0] if n else np.zeros(0, np.uint64)
        order = np.lexsort((tie, -lengths)).astype(np.int64)  # longest first, then by digest
        use_cache = self.cache is not None and (role in self.settings.cache_roles if cache is None else cache)
        entry = self.cache.entry(key, digests[order], shard_rows, label) if use_cache and self.cache else None
        n_shards = (n + shard_rows - 1) // shard_rows
        record = EncodeRecord(role=role, texts=n, shards=n_shards, entry=str(entry.path) if entry else None)

        missing = list(range(n_shards)) if entry is None else entry.missing_shards()
        missing = ctx.broadcast(missing)  # rank 0 decides: every rank must agree on the work list
        record.shards_cached = n_shards - len(missing)
        mine = [s for j, s in enumerate(missing) if ctx.owns(j)]

        def shard_texts(s: int) -> list[str]:
            a, b = s * shard_rows, min(n, (s + 1) * shard_rows)
            return [texts[i] for i in order[a:b]]

        memory: dict[int, np.ndarray] = {}
        todo_rows = sum(min(n, (s + 1) * shard_rows) - s * shard_rows for s in mine)
        note = f"{record.shards_cached}/{n_shards} shards cached" if entry is not None else ""
        progress = _Progress(todo_rows, f"encode {role}s", self.settings.show_progress and ctx.is_main, note)
        try:
            for s in mine:
                batch_texts = shard_texts(s)
                with report_progress(progress.update):
                    vectors = np.asarray(embed_fn(batch_texts), dtype=np.float32)
                progress.shard_done(len(batch_texts))
                if vectors.shape[0] != len(batch_texts):
                    raise ValueError(f"embed returned {vectors.shape[0]} vectors for {len(batch_texts)} texts")
                if entry is not None:
                    entry.write_shard(s, vectors)  # written as produced: a crash after this keeps it
                else:
                    memory[s] = vectors
                record.shards_encoded += 1
        finally:
            progress.close()
        record.tokens = progress.tokens

        if ctx.enabled:
            self._collect(ctx, entry, missing, memory, record)

        reencode = (lambda s: np.asarray(embed_fn(shard_texts(s)), dtype=np.float32)) if entry is not None else None
        record.seconds = time.perf_counter() - start_time
        self.records.append(record)
        ranks = f"; per rank {record.per_rank_shards}" if record.per_rank_shards else ""
        log.log(
            logging.INFO if entry is not None or ctx.enabled else logging.DEBUG,
            "encode %s: %d texts, %d shards (%d cached, %d encoded here%s) in %.1fs",
            role, n, n_shards, record.shards_cached, record.shards_encoded, ranks, record.seconds,
        )
        return EncodedTexts(n, order, shard_rows, entry, memory, reencode, record)

    def _collect(
        self, ctx: DistContext, entry: Any, missing: list[int], memory: dict[int, np.ndarray], record: EncodeRecord
    ) -> None:
        """After every rank encoded its share: rank 0 takes from the (shared) cache what it can see there and
        receives the rest from the ranks that hold it."""
        ctx.barrier()
        need = None
        if ctx.is_main:
            need = [s for s in missing if s not in memory and (entry is None or not entry.has_shard(s))]
        need = ctx.broadcast(need)
        mine = {s for j, s in enumerate(missing) if ctx.owns(j)}
        payload: dict[int, np.ndarray] = {}
        if not ctx.is_main:
            for s in need:
                if s in mine:  # from memory, or from this rank's cache when rank 0 does not share the folder
                    payload[s] = memory[s] if s in memory else np.array(entry.read_shard(s))
        counts = ctx.gather(len(mine))
        parts = ctx.gather(payload)
        if ctx.is_main:
            record.per_rank_shards = list(counts or [])
            for part in parts or []:
                for s, vectors in part.items():
                    if entry is not None:
                        entry.write_shard(s, vectors)
                    else:
                        memory[s] = vectors
        else:
            memory.clear()

    def encode_dense(self, embed_fn: EmbedFn, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """``encode(...).dense()`` on every rank (rank 0 broadcasts): for callers that need all vectors
        everywhere (non-retrieval tasks, queries)."""
        encoded = self.encode(embed_fn, texts, **kwargs)
        ctx = self.ctx
        dense = encoded.dense() if ctx.is_main else None
        return ctx.broadcast(dense) if ctx.enabled else dense
