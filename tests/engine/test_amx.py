"""The AMX score-and-threshold kernel: its hits and group maxima equal torch's bf16 products, it is built once and
reused, and where it cannot run the search falls back to torch's bf16 path (``prefilter=amx`` then says why)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from harness.engine import amx
from harness.engine.search import SearchStats, exact_search, id_ranks

needs_kernel = pytest.mark.skipif(amx.load() is None, reason="no AMX kernel on this machine (CPU or compiler)")


def _reference(d16: torch.Tensor, q16: torch.Tensor) -> torch.Tensor:
    return q16.double() @ d16.double().t()  # [queries, documents]; the kernel accumulates the same in fp32


@needs_kernel
@pytest.mark.parametrize(("n", "m", "dim"), [(1000, 70, 45), (2048, 256, 384), (33, 1, 32), (5, 3, 7)])
def test_hits_and_group_maxima_equal_torch(n: int, m: int, dim: int) -> None:
    kernel = amx.load()
    gen = torch.Generator().manual_seed(n + m + dim)
    d16 = torch.randn(n, dim, generator=gen).bfloat16()
    q16 = torch.randn(m, dim, generator=gen).bfloat16()
    ref = _reference(d16, q16)
    lower = torch.quantile(ref.float(), 0.9, dim=1)  # about a tenth of the pairs are hits
    docs, packed = kernel.pad_docs(d16), kernel.pack_queries(q16)
    query, doc = kernel.hits(docs, packed, lower, n)
    got = torch.zeros(m, n, dtype=torch.bool)
    got[query, doc] = True
    assert query.numel() == int(got.sum())  # no pair twice, none from the padding
    margin = 1e-5 * dim * float(ref.abs().max())  # fp32 accumulation order differs from the reference's
    clear = (ref - lower[:, None].double()).abs() > margin
    assert torch.equal(got[clear], (ref >= lower[:, None].double())[clear])
    gmax = kernel.group_max(docs, packed, n)
    whole = n // 32 * 32
    expected = ref[:, :whole].reshape(m, n // 32, 32).amax(2).t().float()
    assert gmax.shape == (n // 32, m)
    torch.testing.assert_close(gmax, expected, atol=margin, rtol=0)


@needs_kernel
def test_more_hits_than_the_first_buffer_holds() -> None:
    kernel = amx.load()
    d16 = torch.randn(4096, 64).bfloat16()
    q16 = torch.randn(40, 64).bfloat16()
    query, doc = kernel.hits(kernel.pad_docs(d16), kernel.pack_queries(q16), torch.full((40,), -torch.inf), 4096)
    assert query.numel() == 40 * 4096  # every pair, past the first buffer's capacity
    assert len(set(zip(query.tolist(), doc.tolist(), strict=True))) == 40 * 4096


@needs_kernel
def test_first_chunk_floor_from_group_maxima_is_exact() -> None:
    rng = np.random.default_rng(21)
    # small integers: scores exact in fp32 and bf16 (ties are real ties)
    d = rng.integers(-3, 4, size=(16384, 32)).astype(np.float32)
    q = rng.integers(-3, 4, size=(48, 32)).astype(np.float32)
    d[:1024] = np.clip(q[0] + rng.integers(-1, 2, size=(1024, 32)), -3, 3)  # query 0's floor lands too high
    ids = [f"d{i}" for i in range(len(d))]
    chunks = [(d[s : s + 1024], np.arange(s, s + 1024)) for s in range(0, len(d), 1024)]
    stats = SearchStats()
    scores, idx = exact_search(
        q, lambda: iter(chunks), top_k=20, id_rank=id_ranks(ids), similarity="dot", prefilter="amx", stats=stats
    )
    assert stats.prefilter == "amx" and stats.uncertified >= 1 and stats.passes == 2
    # the one dense block is the second round's (a lone query, no floor); the first chunk took the fused path
    assert stats.dense_blocks == 1
    torch_path = SearchStats()
    exact_search(
        q, lambda: iter(chunks), top_k=20, id_rank=id_ranks(ids), similarity="dot", prefilter="bf16", stats=torch_path
    )
    assert torch_path.dense_blocks == 2
    ref = q @ d.T
    for row in range(len(q)):
        order = sorted(range(len(ids)), key=lambda j, row=row: (ref[row, j], ids[j]), reverse=True)[:20]
        assert idx[row].tolist() == order
        np.testing.assert_array_equal(scores[row], ref[row, order])


def test_disabled_kernel_falls_back_and_says_why(monkeypatch) -> None:
    monkeypatch.setattr(amx, "_loaded", {})
    monkeypatch.setenv("HARNESS_AMX_KERNEL", "0")
    assert amx.load() is None and amx.unavailable_reason() == "HARNESS_AMX_KERNEL=0"
    q = np.eye(4, 8, dtype=np.float32)
    d = np.eye(8, dtype=np.float32)
    stats = SearchStats()
    _, idx = exact_search(q, [(d, np.arange(8))], top_k=2, id_rank=np.arange(8), prefilter="auto", stats=stats)
    assert stats.prefilter in ("bf16", "none") and idx[:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="HARNESS_AMX_KERNEL=0"):
        exact_search(q, [(d, np.arange(8))], top_k=2, id_rank=np.arange(8), prefilter="amx")


def test_a_compiler_that_fails_is_reported_not_raised(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(amx, "_loaded", {})
    monkeypatch.setattr(amx, "_cpu_flags", lambda: {"amx_tile", "amx_bf16", "avx512f", "avx512bw"})
    monkeypatch.setattr(amx.platform, "system", lambda: "Linux")
    monkeypatch.setattr(amx.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exits 1 without building anything
    assert amx.load() is None
    assert "could not build bf16_threshold.c" in amx.unavailable_reason()
    assert not list(tmp_path.glob("*.so"))  # nothing half-built left where a later load would find it


@needs_kernel
def test_built_once_then_reused(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path))
    compiler = amx._compiler()
    first = amx._build(compiler)
    assert isinstance(first, type(tmp_path)) and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert amx._build(compiler) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_kernel_loads_where_the_cpu_has_amx() -> None:
    """Where AMX and a compiler are present the kernel must load: a failing self-check is a failure here, not a
    quiet skip of the tests above."""
    from harness.engine.device import cpu_flags

    wanted = {"amx_tile", "amx_bf16", "avx512f", "avx512bw"}
    if not wanted <= cpu_flags() or amx._compiler() is None or os.environ.get("HARNESS_AMX_KERNEL") == "0":
        assert amx.load() is None and amx.unavailable_reason()
        return
    assert amx.load() is not None, amx.unavailable_reason()
