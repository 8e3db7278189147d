"""The streaming exact search equals a brute-force ranking ordered as pytrec_eval orders it (score descending,
then document id descending), with many exact ties, any chunking, the bf16 prefilter, and dropped self-ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.engine import amx
from harness.engine.search import SearchStats, compose_keys, decode_scores, exact_search, id_ranks

# the fused AMX kernel where this CPU has it (tests/engine/test_amx.py covers the kernel and its fallback)
PREFILTERS = [
    "none",
    "bf16",
    pytest.param("amx", marks=pytest.mark.skipif(amx.load() is None, reason="no AMX kernel on this machine")),
]


def brute_force(
    q: np.ndarray, d: np.ndarray, ids: list[str], k: int, exclude: np.ndarray | None = None, cosine: bool = False
) -> list[list[tuple[float, str]]]:
    qt, dt = torch.from_numpy(q), torch.from_numpy(d)
    if cosine:
        qt, dt = torch.nn.functional.normalize(qt, dim=-1), torch.nn.functional.normalize(dt, dim=-1)
    scores = (qt @ dt.T).numpy()
    out = []
    for row in range(len(q)):
        pairs = [(float(scores[row, j]), ids[j]) for j in range(len(ids)) if exclude is None or exclude[row] != j]
        out.append(sorted(pairs, reverse=True)[:k])  # trec_eval: score desc, then docno desc
    return out


def ranked(scores: np.ndarray, idx: np.ndarray, ids: list[str]) -> list[list[tuple[float, str]]]:
    rows = zip(scores, idx, strict=True)
    return [[(float(s), ids[j]) for s, j in zip(srow, irow, strict=True) if j >= 0] for srow, irow in rows]


@pytest.fixture(scope="module")
def tied_corpus() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(7)
    # small integers and dot products: every score is exact in fp32 and bf16 whatever the summation order,
    # so ties are real ties, as pytrec_eval sees them
    d = rng.integers(-2, 3, size=(700, 12)).astype(np.float32)
    d[350:360] = d[10]  # exact duplicates under different ids
    q = rng.integers(-2, 3, size=(37, 12)).astype(np.float32)
    q[0] = d[10]
    ids = [f"doc{i:04d}" if i % 3 else f"d{i}" for i in range(700)]  # ids whose string order is not index order
    rng.shuffle(ids)
    return q, d, ids


@pytest.mark.parametrize("prefilter", PREFILTERS)
@pytest.mark.parametrize("chunk", [700, 64, 100])
def test_equals_brute_force_with_ties(tied_corpus, prefilter: str, chunk: int) -> None:
    q, d, ids = tied_corpus
    perm = np.random.default_rng(chunk).permutation(len(ids))  # chunks may come in any order
    chunks = [(d[perm[s : s + chunk]], perm[s : s + chunk]) for s in range(0, len(ids), chunk)]
    scores, idx = exact_search(
        q, chunks, top_k=50, id_rank=id_ranks(ids), similarity="dot", prefilter=prefilter, query_block=16
    )
    assert ranked(scores, idx, ids) == brute_force(q, d, ids, 50)


@pytest.mark.parametrize("prefilter", PREFILTERS)
def test_cosine_on_real_valued_vectors(prefilter: str) -> None:
    rng = np.random.default_rng(3)
    d = rng.standard_normal((3000, 64)).astype(np.float32) * rng.uniform(0.5, 2, (3000, 1)).astype(np.float32)
    q = d[rng.integers(0, 3000, 40)] + 0.3 * rng.standard_normal((40, 64)).astype(np.float32)
    ids = [str(i) for i in range(3000)]
    chunks = [(d[s : s + 512], np.arange(s, min(3000, s + 512))) for s in range(0, 3000, 512)]
    scores, idx = exact_search(q, chunks, top_k=100, id_rank=id_ranks(ids), prefilter=prefilter, query_block=8)
    expected = brute_force(q, d, ids, 100, cosine=True)
    got = ranked(scores, idx, ids)
    assert [[doc for _, doc in r] for r in got] == [[doc for _, doc in r] for r in expected]
    np.testing.assert_allclose([s for r in got for s, _ in r], [s for r in expected for s, _ in r], atol=2e-6)


def test_identical_ids_are_dropped_and_the_top_k_refilled(tied_corpus) -> None:
    q, d, ids = tied_corpus
    exclude = np.full(len(q), -1, dtype=np.int64)
    exclude[0] = 10  # query 0 is document 10's twin: its own id must not come back
    exclude[5] = 3
    chunks = [(d[s : s + 128], np.arange(s, min(len(d), s + 128))) for s in range(0, len(d), 128)]
    for prefilter in ("none", "bf16", "amx" if amx.load() is not None else "auto"):
        scores, idx = exact_search(
            q, chunks, top_k=20, id_rank=id_ranks(ids), exclude=exclude, similarity="dot", prefilter=prefilter
        )
        assert 10 not in idx[0] and 3 not in idx[5] and (idx[:, -1] >= 0).all()
        assert ranked(scores, idx, ids) == brute_force(q, d, ids, 20, exclude)


def test_fewer_documents_than_k_and_dot_product() -> None:
    q = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    d = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    scores, idx = exact_search(q, [(d, np.arange(3))], top_k=5, id_rank=np.arange(3), similarity="dot")
    assert idx.tolist() == [[0, 2, 1, -1, -1], [2, 1, 0, -1, -1]]
    assert scores[0, :3].tolist() == [2.0, 1.0, 0.0] and scores[1, :3].tolist() == [2.0, 2.0, 0.0]


def test_keys_order_like_floats_then_ids() -> None:
    s = torch.tensor([0.5, -0.0, 0.0, -1.5, 3.0, 0.5], dtype=torch.float32)
    rank = torch.tensor([0, 5, 1, 2, 3, 4])
    keys = compose_keys(s, rank)
    order = torch.argsort(keys, descending=True).tolist()
    assert order == [4, 5, 0, 1, 2, 3]  # 3.0; 0.5 with the larger id first; ±0.0 tie broken by id; -1.5
    torch.testing.assert_close(decode_scores(keys), s + 0.0)


def test_two_level_scan_finds_exactly_the_scores_at_or_above_a_positive_threshold() -> None:
    from harness.engine import search

    gen = torch.Generator().manual_seed(0)
    d16 = (torch.randn(2048 + 256, 16, generator=gen) * 0.3).to(torch.bfloat16)  # two tiles, the last partial
    q16_t = (torch.randn(16, 40, generator=gen) * 0.3).to(torch.bfloat16)
    approx_t = d16 @ q16_t
    lower = torch.rand(40, generator=gen).mul(0.3).add(0.3).to(torch.bfloat16)
    lower[3] = approx_t[:, 3].max()  # a threshold met exactly once
    rows, cols = search._candidates_positive(d16, q16_t, lower)
    ref_cols, ref_rows = search.sparse_nonzero(approx_t >= lower[None, :])
    pairs = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert pairs == sorted(zip(ref_rows.tolist(), ref_cols.tolist(), strict=True))
    assert (rows == 3).sum() == 1 and len(rows) > 40


def _chunked(d: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(d[s : s + size], np.arange(s, min(len(d), s + size))) for s in range(0, len(d), size)]


@pytest.mark.parametrize("prefilter", PREFILTERS)
def test_admission_floor_is_exact_and_cuts_candidates(prefilter: str) -> None:
    rng = np.random.default_rng(11)
    # small integers: scores exact in fp32 and bf16 whatever the summation order (ties are real ties)
    d = rng.integers(-3, 4, size=(8192, 24)).astype(np.float32)
    q = np.clip(d[rng.integers(0, len(d), 64)] + rng.integers(-1, 2, size=(64, 24)), -3, 3).astype(np.float32)
    ids = [f"d{i}" for i in range(len(d))]
    chunks = _chunked(d, 512)  # 16 chunks: the first sets the floor
    with_floor, without = SearchStats(), SearchStats()
    scores, idx = exact_search(
        q, chunks, top_k=50, id_rank=id_ranks(ids), similarity="dot", prefilter=prefilter, stats=with_floor
    )
    plain = exact_search(
        q, iter(chunks), top_k=50, id_rank=id_ranks(ids), similarity="dot", prefilter=prefilter, stats=without
    )
    assert ranked(scores, idx, ids) == brute_force(q, d, ids, 50)
    np.testing.assert_array_equal(idx, plain[1])
    assert without.passes == 1 and with_floor.candidates < 0.8 * without.candidates


@pytest.mark.parametrize("prefilter", PREFILTERS)
def test_a_floor_set_too_high_sends_the_query_round_again(prefilter: str) -> None:
    rng = np.random.default_rng(12)
    d = rng.integers(-3, 4, size=(4096, 16)).astype(np.float32)
    q = rng.integers(-3, 4, size=(8, 16)).astype(np.float32)
    # the first chunk holds query 0's best documents: its floor lands far above the rest of the corpus
    d[:256] = np.clip(q[0] + rng.integers(-1, 2, size=(256, 16)), -3, 3)
    ids = [f"d{i}" for i in range(len(d))]
    stats = SearchStats()
    scores, idx = exact_search(
        q, lambda: iter(_chunked(d, 256)), top_k=300, id_rank=id_ranks(ids), similarity="dot",
        prefilter=prefilter, stats=stats,
    )
    assert stats.uncertified >= 1 and stats.passes == 2  # query 0's floor left fewer than 300 above it
    assert ranked(scores, idx, ids) == brute_force(q, d, ids, 300)
