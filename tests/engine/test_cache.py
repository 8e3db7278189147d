"""The embedding cache: what hits, what never hits, and what happens to a damaged shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.engine.cache import CorruptShardError, EmbeddingCache, text_digests
from harness.engine.encode import EncodeEngine, EngineSettings
from harness.models.hash_encoder import HashEncoder, hash_embed

TEXTS = [f"document {i} about {'rain ' * (i % 7)}and snow" for i in range(50)]


class CountingEmbed:
    """An embed function that records every text it is asked for."""

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.calls: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += texts
        return np.stack([hash_embed(t, self.dim) for t in texts])


def engine(root: Path, **settings: object) -> EncodeEngine:
    return EncodeEngine(EngineSettings(cache_dir=root, shard_rows=8, **settings))  # type: ignore[arg-type]


def key(prefix: str = "", role: str = "document", dtype: str = "float32") -> dict[str, object]:
    return {"model": {"name": "m", "dtype": dtype, "max_length": 128}, "role": role, "prefix": prefix}


def test_same_key_hits_in_any_order_and_returns_caller_order(tmp_path: Path) -> None:
    embed = CountingEmbed()
    first = engine(tmp_path).encode(embed, TEXTS, key=key(), role="document").dense()
    assert len(embed.calls) == len(TEXTS)
    shuffled = TEXTS[::-1]
    again = engine(tmp_path).encode(embed, shuffled, key=key(), role="document")
    assert len(embed.calls) == len(TEXTS)  # the same corpus in another order (another task): no encoding
    assert again.record.shards_cached == again.record.shards == 7
    np.testing.assert_array_equal(again.dense(), first[::-1])
    np.testing.assert_array_equal(first, np.stack([hash_embed(t, 16) for t in TEXTS]))


@pytest.mark.parametrize(
    "other",
    [key(prefix="Instruct: find the answer\nQuery: "), key(role="query"), key(dtype="bfloat16")],
    ids=["instruction", "role", "model-dtype"],
)
def test_keys_differing_only_in_instruction_role_or_dtype_never_hit(tmp_path: Path, other: dict) -> None:
    embed = CountingEmbed()
    engine(tmp_path).encode(embed, TEXTS, key=key(), role="document")
    embed.calls.clear()
    result = engine(tmp_path).encode(embed, TEXTS, key=other, role="document")
    assert embed.calls and len(embed.calls) == len(TEXTS)
    assert result.record.shards_cached == 0


def test_storage_dtype_is_part_of_the_key(tmp_path: Path) -> None:
    embed = CountingEmbed()
    exact = engine(tmp_path).encode(embed, TEXTS, key=key(), role="document")
    half = engine(tmp_path, cache_dtype="float16").encode(embed, TEXTS, key=key(), role="document")
    assert half.record.shards_cached == 0 and exact.entry.path != half.entry.path
    assert half.entry.read_shard(0).dtype == np.float16


def test_adapter_key_fields_separate_role_prefix_and_dtype() -> None:
    base = HashEncoder({"name": "h", "dim": 8, "device": "cpu"})
    bf16 = HashEncoder({"name": "h", "dim": 8, "device": "cpu", "dtype": "bfloat16"})
    keys = {
        "doc": base.vector_key_fields("document", ""),
        "query": base.vector_key_fields("query", ""),
        "prefix": base.vector_key_fields("document", "query: "),
        "dtype": bf16.vector_key_fields("document", ""),
    }
    digests = {name: EmbeddingCache("/unused").key_fields(k) for name, k in keys.items()}
    from harness.engine.cache import vector_key

    assert len({vector_key(d) for d in digests.values()}) == 4
    assert "instructions_source" not in keys["doc"]["model"]


def test_corrupted_shard_is_detected_and_encoded_again(tmp_path: Path) -> None:
    embed = CountingEmbed()
    first = engine(tmp_path).encode(embed, TEXTS, key=key(), role="document")
    expected = first.dense()
    shard = first.entry.shard_path(2)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern inside the vectors; the file keeps its size
    shard.write_bytes(bytes(data))

    with pytest.raises(CorruptShardError, match="checksum"):
        first.entry.read_shard(2)
    assert not shard.exists()  # discarded, never read as data

    data = bytearray(first.entry.shard_path(3).read_bytes())
    data[-1] ^= 0x01
    first.entry.shard_path(3).write_bytes(bytes(data))
    embed.calls.clear()
    again = engine(tmp_path).encode(embed, TEXTS, key=key(), role="document")
    assert len(embed.calls) == 8  # shard 2 was gone: encoded again at once
    assert again.record.shards_cached == 6
    np.testing.assert_array_equal(again.dense(), expected)  # shard 3 failed its checksum on read and was redone
    assert again.record.shards_corrupt == 1 and len(embed.calls) == 16


def test_half_written_shard_counts_as_missing(tmp_path: Path) -> None:
    embed = CountingEmbed()
    first = engine(tmp_path).encode(embed, TEXTS, key=key(), role="document")
    first.entry.shard_path(1).write_bytes(first.entry.shard_path(1).read_bytes()[:100])  # truncated
    first.entry.record_path(4).unlink()  # the crash came between the data and its record
    assert first.entry.missing_shards() == [1, 4]


def test_digests_are_content_hashes() -> None:
    d = text_digests(["a", "b", "a"])
    assert d[0] == d[2] != d[1] and d.dtype == np.dtype("S16")


def test_crc32_records_without_xxhash_are_verified_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where xxhash is missing (a bare GPU box) shards are written with CRC-32; both record kinds are read, and a
    record naming XXH3-64 on such a box counts as unverifiable (re-encoded), never as good data."""
    from harness.engine import cache

    assert cache.xxhash is not None  # the harness installs it: the fast path is the one normally taken
    first = engine(tmp_path).encode(CountingEmbed(), TEXTS, key=key(), role="document")
    assert "xxh3_64" in json.loads(first.entry.record_path(0).read_text())
    expected = first.dense()

    monkeypatch.setattr(cache, "xxhash", None)
    with pytest.raises(CorruptShardError, match="xxhash package is not installed"):
        first.entry.read_shard(0)
    crc_dir = tmp_path / "crc"
    crc = engine(crc_dir).encode(CountingEmbed(), TEXTS, key=key(), role="document")
    assert "crc32" in json.loads(crc.entry.record_path(1).read_text())
    np.testing.assert_array_equal(crc.dense(), expected)
    data = bytearray(crc.entry.shard_path(1).read_bytes())
    data[-3] ^= 0x10
    crc.entry.shard_path(1).write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="checksum mismatch"):
        crc.entry.read_shard(1)

    monkeypatch.undo()  # CRC-32 records stay readable once xxhash is back
    np.testing.assert_array_equal(crc.entry.read_shard(2), first.entry.read_shard(2))
