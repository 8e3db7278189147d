"""The embedding cache: vectors on disk in checksummed, memory-mapped shards, keyed by everything that changes them.

Owns: the key (``vector_key``: the adapter's description of what changes a vector, plus role, the exact prefix
string and the storage dtype; ``content_key``: the texts' hashes in the entry's row order), the layout on disk,
atomic shard writes, and the refusal to hand out a shard that fails its checksum. Must not know what a model, a
prompt or a task is: the caller passes the key fields, and nothing here reads them except to hash and record.

Layout (``cache_dir`` in ``conf/config.yaml``)::

    <cache_dir>/<model slug>/<vector key>/key.json                 the fields hashed into the vector key
    <cache_dir>/<model slug>/<vector key>/<content key>/manifest.json
    <cache_dir>/<model slug>/<vector key>/<content key>/shard-00000.npy   rows [0, shard_rows), fp32 or fp16
    <cache_dir>/<model slug>/<vector key>/<content key>/shard-00000.json  rows, dim, dtype, bytes, checksum

A shard counts as written only when its ``.json`` exists (written after the ``.npy`` is renamed into place), so
a crash leaves at most one half-written shard, which the next run encodes again. Every read checks the shard's
shape, dtype and checksum against its ``.json`` (XXH3-64 where the ``xxhash`` package is installed, as it is with
the harness: ~10x faster than CRC-32, whose 2 GB/s was a visible share of a large search; CRC-32 otherwise, and
records of either kind are read); a mismatch deletes the shard and raises ``CorruptShardError``
(the encode engine re-encodes it). Concurrent writers of the same entry are safe: each file is written to a
temporary name and renamed, and two writers of one shard write identical bytes.

The task is in no key: a corpus shared by two tasks (FEVER and ClimateFEVER, a pipeline's first stage and a
plain run) has the same content key and is encoded once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.results.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

try:  # XXH3 hashes at memory speed; CRC-32 (zlib) is the fallback where the package is missing (a bare GPU box)
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None

#: bumped when the layout or the meaning of a key changes; part of every vector key
CACHE_FORMAT = 1
STORAGE_DTYPES = {"float32": np.float32, "fp32": np.float32, "float16": np.float16, "fp16": np.float16}


class CorruptShardError(RuntimeError):
    """A shard whose bytes do not match its record; it has been deleted and must be encoded again."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason} (shard discarded; it will be encoded again)")
        self.path = path
        self.reason = reason


def storage_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(STORAGE_DTYPES[str(name)])
    except KeyError:
        raise ValueError(f"cache dtype {name!r}: expected one of {sorted(STORAGE_DTYPES)}") from None


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """A 16-byte BLAKE2b digest of each text's UTF-8 bytes, as a ``[n]`` array of ``S16``."""
    out = np.empty(len(texts), dtype="S16")
    for i, text in enumerate(texts):
        out[i] = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return out


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def vector_key(fields: Mapping[str, Any]) -> str:
    """The hex digest of the key fields (sorted JSON) and the cache format."""
    payload = _canonical_json({"cache_format": CACHE_FORMAT, **dict(fields)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def content_key(ordered_digests: np.ndarray, shard_rows: int) -> str:
    """The hex digest of the texts' digests in the entry's row order (and the shard size: the layout)."""
    h = hashlib.sha256(f"rows={len(ordered_digests)};shard_rows={shard_rows};".encode())
    h.update(np.ascontiguousarray(ordered_digests).tobytes())
    return h.hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))[:80] or "model"


class CacheEntry:
    """One (vector key, content key) pair: ``rows`` vectors in ``n_shards`` shards of ``shard_rows`` rows."""

    def __init__(self, path: Path, rows: int, shard_rows: int, dtype: np.dtype, manifest: Mapping[str, Any]):
        self.path = path
        self.rows = rows
        self.shard_rows = shard_rows
        self.dtype = dtype
        self.manifest = dict(manifest)
        self.n_shards = (rows + shard_rows - 1) // shard_rows

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_rows
        return start, min(self.rows, start + self.shard_rows)

    def shard_path(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}.npy"

    def record_path(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}.json"

    def _record(self, shard: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(shard).read_text())
        except (OSError, ValueError):
            return None

    def has_shard(self, shard: int) -> bool:
        """Written and of the recorded size (cheap: no checksum; ``read_shard`` checks that)."""
        record = self._record(shard)
        if record is None:
            return False
        try:
            return self.shard_path(shard).stat().st_size == int(record["file_bytes"])
        except (OSError, KeyError, ValueError):
            return False

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if not self.has_shard(s)]

    def write_shard(self, shard: int, vectors: np.ndarray) -> None:
        """Store ``vectors`` (rows of this shard, in order) as the storage dtype; the record goes last."""
        start, end = self.bounds(shard)
        if vectors.ndim != 2 or vectors.shape[0] != end - start:
            raise ValueError(f"shard {shard} holds {end - start} rows, got an array of shape {vectors.shape}")
        data = np.ascontiguousarray(vectors, dtype=self.dtype)
        path = self.shard_path(shard)
        atomic_write(path, lambda tmp: _save_npy(tmp, data))
        record = {
            "shard": shard,
            "rows": int(data.shape[0]),
            "dim": int(data.shape[1]),
            "dtype": data.dtype.name,
            "data_bytes": int(data.nbytes),
            "file_bytes": path.stat().st_size,
            **_checksum(data),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(self.record_path(shard), record, indent=None)

    def read_shard(self, shard: int) -> np.ndarray:
        """The shard as a read-only memory map, after its shape, dtype and checksum are verified."""
        record = self._record(shard)
        path = self.shard_path(shard)
        if record is None:
            raise CorruptShardError(path, "no record")
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            self.discard(shard)
            raise CorruptShardError(path, f"unreadable ({exc})") from None
        start, end = self.bounds(shard)
        expected = (end - start, int(record.get("dim", -1)))
        if data.shape != expected or data.dtype != self.dtype or data.dtype.name != record.get("dtype"):
            shape, dtype = data.shape, data.dtype
            del data
            self.discard(shard)
            raise CorruptShardError(path, f"shape/dtype {shape} {dtype}, expected {expected} {self.dtype}")
        problem = _verify(data, record)
        if problem:
            del data
            self.discard(shard)
            raise CorruptShardError(path, problem)
        return data

    def read_shard_into(self, shard: int, out: np.ndarray) -> None:
        """``read_shard`` into ``out`` (the shard's rows x dim, storage dtype, C order) by plain reads: no memory
        map, so no page fault per 4 KiB page (reading a large corpus this way is several times faster)."""
        record = self._record(shard)
        path = self.shard_path(shard)
        if record is None:
            raise CorruptShardError(path, "no record")
        start, end = self.bounds(shard)
        expected = (end - start, int(record.get("dim", -1)))
        if out.shape != expected or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"{path}: buffer {out.shape} {out.dtype} does not fit the shard {expected} {self.dtype}")
        try:
            with path.open("rb") as handle:
                version = np.lib.format.read_magic(handle)
                fmt = np.lib.format
                reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = reader(handle)
                if shape != expected or fortran or dtype != self.dtype or dtype.name != record.get("dtype"):
                    problem = f"shape/dtype {shape} {dtype}, expected {expected} {self.dtype}"
                else:
                    got = handle.readinto(memoryview(out).cast("B")) if out.size else 0
                    problem = "" if got == out.nbytes and not handle.read(1) else "truncated or overlong"
        except (OSError, ValueError) as exc:
            problem = f"unreadable ({exc})"
        problem = problem or _verify(out, record)
        if problem:
            self.discard(shard)
            raise CorruptShardError(path, problem)

    def shard_layout(self, shard: int) -> tuple[int, np.dtype]:
        """(dim, storage dtype) as recorded; dim -1 without a record."""
        record = self._record(shard) or {}
        return int(record.get("dim", -1)), self.dtype

    def discard(self, shard: int) -> None:
        self.record_path(shard).unlink(missing_ok=True)
        self.shard_path(shard).unlink(missing_ok=True)


def _checksum(data: np.ndarray) -> dict[str, Any]:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    if xxhash is not None:
        return {"xxh3_64": xxhash.xxh3_64_hexdigest(view)}
    return {"crc32": zlib.crc32(view)}


def _verify(data: np.ndarray, record: Mapping[str, Any]) -> str:
    """Why ``data`` does not match its record ('' if it does)."""
    view = memoryview(np.ascontiguousarray(data)).cast("B") if data.size else b""
    if "xxh3_64" in record:
        if xxhash is None:
            return "checksum is XXH3-64 and the xxhash package is not installed"
        return "" if xxhash.xxh3_64_hexdigest(view) == record["xxh3_64"] else "checksum mismatch"
    if "crc32" in record:
        return "" if zlib.crc32(view) == int(record["crc32"]) else "checksum mismatch"
    return "no checksum in the record"


def _save_npy(path: Path, data: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, data, allow_pickle=False)


class EmbeddingCache:
    """A cache folder. ``dtype``: how vectors are stored (float32 is exact; float16 halves the disk and memory
    of large corpora and changes scores in the last digits, so it is part of the key)."""

    def __init__(self, root: str | Path, dtype: str = "float32"):
        self.root = Path(root).expanduser()
        self.dtype = storage_dtype(dtype)

    def key_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {**dict(fields), "storage_dtype": self.dtype.name}

    def entry(
        self, fields: Mapping[str, Any], ordered_digests: np.ndarray, shard_rows: int, label: str = "model"
    ) -> CacheEntry:
        """The entry for texts with these digests (in row order) under these key fields; created if new."""
        if shard_rows < 1:
            raise ValueError(f"cache shard_rows must be >= 1, got {shard_rows}")
        key = self.key_fields(fields)
        vkey = vector_key(key)
        ckey = content_key(ordered_digests, shard_rows)
        model_dir = self.root / _slug(label) / vkey[:32]
        path = model_dir / ckey[:32]
        manifest = {
            "cache_format": CACHE_FORMAT,
            "vector_key": vkey,
            "content_key": ckey,
            "rows": len(ordered_digests),
            "shard_rows": shard_rows,
            "n_shards": (len(ordered_digests) + shard_rows - 1) // shard_rows,
            "storage_dtype": self.dtype.name,
            "key": key,
        }
        existing = _read_json(path / "manifest.json")
        if existing is not None and (existing.get("vector_key"), existing.get("content_key")) != (vkey, ckey):
            # a prefix collision of two different keys: never mix them; start this entry over
            log.warning("cache entry %s belongs to another key; discarding it", path)
            for child in path.iterdir():
                child.unlink(missing_ok=True)
            existing = None
        if existing is None:
            path.mkdir(parents=True, exist_ok=True)
            if not (model_dir / "key.json").exists():
                atomic_write_json(model_dir / "key.json", {"vector_key": vkey, "key": key})
            atomic_write_json(path / "manifest.json", {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return CacheEntry(path, len(ordered_digests), shard_rows, self.dtype, manifest)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

