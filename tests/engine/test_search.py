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


def _cancelling(rng: np.random.Generator, n: int = 4096, dim: int = 64, m: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Queries and documents whose scores are exact in fp32 (multiples of 2^-10 below 2^13: no summation order
    changes them) but whose large common part cancels: what decides the top-k lies in bits that bf16 rounding
    drops, so a bound that misses part of the rounding drops true top-k documents. Queries are exact in bf16
    (no query rounding term in the bound to hide a missing document term)."""
    unit = 2.0**-9
    centre = rng.integers(2**9, 2**10, dim - 1)
    d = np.empty((n, dim), dtype=np.float32)
    d[:, 0] = 1 + unit  # bf16 rounds it to 1
    d[:, 1:] = (centre + rng.integers(-1, 2, (n, dim - 1))) * unit  # differences below bf16's resolution
    g = rng.integers(-32, 33, (m, dim - 1)).astype(np.float32)
    alpha = np.round(-(g @ (centre * unit)) / (1 + unit))  # cancels most of each score
    alpha = torch.from_numpy(alpha.astype(np.float32)).bfloat16().float().numpy()
    return np.concatenate([alpha[:, None], g], axis=1), d


@pytest.mark.parametrize("prefilter", PREFILTERS[1:])
@pytest.mark.parametrize(
    ("q_scale", "d_scale"),
    [
        (2.0**50, 2.0**-70),  # tiny documents: their rounding residuals square to 0 in fp32
        (1.0, 2.0**66),  # huge documents (~1e20): their squared norms overflow fp32
        (2.0**112, 2.0**-128),  # subnormal documents (read as 0 by bf16 hardware) against huge queries
    ],
    ids=["tiny", "huge", "subnormal"],
)
def test_extreme_scales_keep_the_exact_top_k(prefilter: str, q_scale: float, d_scale: float) -> None:
    q, d = _cancelling(np.random.default_rng(0))
    q, d = q * np.float32(q_scale), d * np.float32(d_scale)  # powers of 2: the scores stay exact
    assert np.isfinite(q).all() and np.isfinite(d).all()
    ids = [f"d{i}" for i in range(len(d))]
    got, want = (
        # read once (no admission floor): a floor's fp32 second round would hide a prefilter that drops documents
        exact_search(q, iter(_chunked(d, 512)), top_k=10, id_rank=id_ranks(ids), similarity="dot", prefilter=name)
        for name in (prefilter, "none")
    )
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("prefilter", PREFILTERS[1:])
def test_subnormal_documents_against_huge_queries_keep_the_exact_top_k(prefilter: str) -> None:
    """bf16 hardware reads subnormal inputs as 0: without that in the bound, every score here reads as 0."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((8, 64))
    d = (centres[rng.integers(0, 8, 4096)] * (1 + 2.0**-11 * rng.standard_normal((4096, 64)))).astype(np.float32)
    q = torch.from_numpy(d[rng.integers(0, len(d), 24)]).bfloat16().float().numpy() * np.float32(2.0**120)
    d *= np.float32(2.0**-128)
    ids = [f"d{i}" for i in range(len(d))]
    got, want = (
        exact_search(q, iter(_chunked(d, 512)), top_k=10, id_rank=id_ranks(ids), similarity="dot", prefilter=name)
        for name in (prefilter, "none")
    )
    np.testing.assert_array_equal(got[1], want[1])
    # rescored one by one, not in a matrix product: the same fp32 score up to summation order
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


@pytest.mark.parametrize("prefilter", PREFILTERS[1:])
def test_values_that_round_to_inf_in_bf16_are_scored_in_fp32(prefilter: str) -> None:
    rng = np.random.default_rng(6)
    d = rng.standard_normal((2048, 32)).astype(np.float32) * np.float32(2.0**120)
    d[600:610, 0] = 3.4e38  # finite in fp32, past bf16's largest value (in the second chunk: after the dense one)
    q = rng.standard_normal((20, 32)).astype(np.float32) * np.float32(2.0**-100)
    q[:, 0] = np.abs(q[:, 0])
    ids = [f"d{i}" for i in range(len(d))]
    got, want = (
        exact_search(q, iter(_chunked(d, 512)), top_k=10, id_rank=id_ranks(ids), similarity="dot", prefilter=name)
        for name in (prefilter, "none")
    )
    assert np.isin(got[1][:, 0], np.arange(600, 610)).mean() > 0.5  # these score highest, mostly
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_overflowing_scores_rank_last_in_every_mode() -> None:
    # finite vectors whose products overflow fp32: +inf, or NaN where +inf and -inf meet in one sum
    q = np.array([[1e20, 1e20, 0, 0], [1, 1, 1, 1]], dtype=np.float32)
    d = np.array(
        [[1e19, -1e19, 0, 0], [1e19, 1e19, 0, 0], [1e18, 1e17, 0, 0], [0, 0, 1, 0], [-1e19, 1e19, 1, 1]],
        dtype=np.float32,
    )
    ids = [f"d{i}" for i in range(len(d))]
    for prefilter in [p if isinstance(p, str) else p.values[0] for p in PREFILTERS]:
        if prefilter == "amx" and amx.load() is None:
            continue
        scores, idx = exact_search(
            q, [(d, np.arange(len(d)))], top_k=5, id_rank=id_ranks(ids), similarity="dot", prefilter=prefilter
        )
        # NaN scores (documents 0 and 4 for query 0) count as -inf: after every finite score, ties by id
        assert idx[0].tolist() == [1, 2, 3, 4, 0], prefilter
        assert scores[0].tolist()[:3] == [np.inf, np.float32(1.1e38), 0.0] and np.isneginf(scores[0, 3:]).all()
        assert not np.isnan(scores).any()


@pytest.mark.parametrize("prefilter", PREFILTERS)
@pytest.mark.parametrize("where", ["query", "document"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_rejected(prefilter: str, where: str, value: float) -> None:
    rng = np.random.default_rng(2)
    q = rng.standard_normal((40, 32)).astype(np.float32)
    d = rng.standard_normal((2000, 32)).astype(np.float32)
    (q if where == "query" else d)[7, 3] = value
    ids = [f"d{i}" for i in range(len(d))]
    for similarity in ("dot", "cosine"):
        with pytest.raises(ValueError, match=f"{where} .*7.* NaN or inf"):
            exact_search(
                q, _chunked(d, 500), top_k=10, id_rank=id_ranks(ids), similarity=similarity, prefilter=prefilter
            )


@pytest.mark.parametrize("prefilter", PREFILTERS)
def test_reduced_float32_matmul_precision_does_not_change_the_scores(prefilter: str) -> None:
    rng = np.random.default_rng(4)
    d = rng.standard_normal((3000, 96)).astype(np.float32)
    q = rng.standard_normal((300, 96)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(d))]

    def search() -> tuple[np.ndarray, np.ndarray]:
        return exact_search(q, _chunked(d, 1000), top_k=20, id_rank=id_ranks(ids), prefilter=prefilter)

    before = torch.get_float32_matmul_precision()
    mkldnn = getattr(torch.backends.mkldnn, "matmul", None)  # torch >= 2.9: a precision per backend too
    backends_before = [mkldnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision] if mkldnn else []
    torch.set_float32_matmul_precision("highest")
    try:
        reference = search()
        for precision in ("medium", "high", "bf16 for oneDNN alone"):
            if precision.startswith("bf16"):
                if mkldnn is None:
                    continue
                torch.set_float32_matmul_precision("highest")
                mkldnn.fp32_precision = "bf16"
            else:
                torch.set_float32_matmul_precision(precision)
            settings = [torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction]
            settings += [mkldnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision] if mkldnn else []
            got = search()
            np.testing.assert_array_equal(got[1], reference[1])
            np.testing.assert_array_equal(got[0], reference[0])
            # and the caller's settings are back afterwards
            if not precision.startswith("bf16"):
                assert torch.get_float32_matmul_precision() == precision
            again = [torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction]
            again += [mkldnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision] if mkldnn else []
            assert again == settings
    finally:
        torch.set_float32_matmul_precision(before)
        if mkldnn is not None:
            mkldnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = backends_before
