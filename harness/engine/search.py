"""Streaming exact search: the top-k documents of every query, the corpus read chunk by chunk.

Owns: the score matrix products (fp32 accumulation), a running top-k per query kept on the device and merged
with ``torch.topk`` (no Python heap per query), tie-breaking identical to pytrec_eval's (score descending, then
document id descending: the ranking the metrics are computed from), dropping a query's own id when the task says
so, and ``StreamingSearch``: mteb's SearchProtocol over an embedding adapter, so that mteb hands us the corpus and
the queries and we return ``{query id: {doc id: score}}``. Must not know prompts or models (the adapter encodes)
and must not import mteb at module level (mteb calls us; we only read the batches it gives).

How the running top-k stays cheap: after the first chunk every query has a threshold (its k-th best exact score
so far). For each later chunk only scores at or above the threshold are candidates: one comparison per score
instead of a selection, and the candidates (a handful per query and chunk) are merged into the running top-k
by a ``topk`` over ``k + candidates`` int64 keys that order by (score, id rank), which is what makes ties exact.

The admission floor: a running threshold admits about ``k (1 + ln(N / chunk))`` candidates per query, most of
them early, while it is still low. When the corpus can be read again, the first chunk also sets a floor per
query: its j-th best score there, j chosen so that about ``3k`` documents of the whole corpus are expected above
it. Documents below ``max(threshold, floor)`` are never candidates (about 45 % fewer on the benchmark). The
floor costs no exactness: a query whose k-th best ends at or above its floor has lost only documents below its
k-th; a query whose floor proved too high (fewer than k above it: an unlucky first chunk) is searched again,
alone, without a floor (``SearchStats.uncertified``).

Optional prefilter (``prefilter``: auto|amx|bf16|none): the chunk is scored first in bfloat16 (AMX/AVX512-BF16
CPUs and GPUs do that several times faster than fp32); a proven bound on the bf16 error (from the exact norms
of the rounding residuals) widens the threshold, so every document that could enter the top-k is a candidate,
and candidates are rescored exactly in fp32. The result is the exact fp32 top-k, not an approximation. On AMX
CPUs the bf16 products and the threshold test run fused in our own kernel (``amx.py``: ``amx``, what ``auto``
picks there); elsewhere through ``torch.mm`` (``bf16``). The bound's norms are taken in float64 where fp32
squares would underflow or overflow; a block whose bound is not finite, or whose fp32 scores could overflow, is
scored in plain fp32 instead.

Every mode gives the same answer at the edges: vectors with NaN or inf are refused (``ValueError`` naming the
query or document); finite vectors whose fp32 products overflow get ``inf`` scores, or NaN ones where ``+inf``
and ``-inf`` meet in a sum, and those count as ``-inf`` (ranked after every other score).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from harness.engine import amx
from harness.engine.device import cpu_flags

log = logging.getLogger(__name__)

INT64_MIN = -(2**63)
T = TypeVar("T")
_TWO32 = 2**32


# -- keys that sort by (score, id rank) ---------------------------------------------------------------------------
def _score_bits(scores: torch.Tensor) -> torch.Tensor:
    """float32 → int64 with the same order (``-0.0`` counts as ``0.0``, as it compares equal)."""
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)


def compose_keys(scores: torch.Tensor, id_rank: torch.Tensor) -> torch.Tensor:
    """int64 keys: larger score first, then larger id rank (the id's place in ascending string order)."""
    return _score_bits(scores) * _TWO32 + id_rank


def decode_scores(keys: torch.Tensor) -> torch.Tensor:
    high = torch.div(keys, _TWO32, rounding_mode="floor").to(torch.int32)
    return torch.where(high < 0, high ^ 0x7FFFFFFF, high).view(torch.float32)


def id_ranks(doc_ids: Sequence[str]) -> np.ndarray:
    """Each id's position in ascending order of the ids (Python string order = code point = UTF-8 byte order,
    which is how trec_eval compares document numbers)."""
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)
    ranks = np.empty(len(doc_ids), dtype=np.int64)
    ranks[np.asarray(order, dtype=np.int64)] = np.arange(len(doc_ids), dtype=np.int64)
    return ranks


# -- the kernel -------------------------------------------------------------------------------------------------------
@dataclass
class SearchStats:
    chunks: int = 0
    documents: int = 0
    candidates: int = 0
    prefilter_candidates: int = 0
    dense_blocks: int = 0
    filtered_blocks: int = 0
    prefilter: str = "none"
    passes: int = 0
    uncertified: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def bf16_is_fast(device: torch.device) -> bool:
    """GPUs, and CPUs whose flags promise bf16 matrix units (AMX) or instructions (AVX512-BF16)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


class _TopK:
    """The running top-k of a set of queries, on the device: int64 keys (score, id rank) and corpus indices."""

    def __init__(self, n_queries: int, k: int, device: torch.device):
        self.k = k
        self.keys = torch.full((n_queries, k), INT64_MIN, dtype=torch.int64, device=device)
        self.docs = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
        self.tau = torch.full((n_queries,), -math.inf, dtype=torch.float32, device=device)
        self.full = torch.zeros(n_queries, dtype=torch.bool, device=device)
        # an admission floor guessed from the first chunk (see exact_search); -inf: none
        self.floor = torch.full((n_queries,), -math.inf, dtype=torch.float32, device=device)

    def bar(self, a: int, b: int) -> torch.Tensor:
        """The score a document must reach to enter rows ``a..b``: the k-th so far, or the floor if higher."""
        return torch.maximum(self.tau[a:b], self.floor[a:b])

    def has_bar(self, a: int, b: int) -> bool:
        return bool((self.full[a:b] | (self.floor[a:b] > -math.inf)).all())

    def certified(self) -> torch.Tensor:
        """Rows whose top-k is exact despite the floor: full, with the k-th at or above the floor (every document
        left out scored below the bar, hence below the k-th)."""
        return (self.full & (self.tau >= self.floor)) | (self.floor == -math.inf)

    def merge(self, a: int, b: int, rows: torch.Tensor, keys: torch.Tensor, docs: torch.Tensor) -> None:
        """Merge candidates (``rows`` local to ``[a, b)``, sorted ascending) into rows ``a..b``."""
        if rows.numel() == 0:
            return
        # index_select / index_copy_ rather than advanced indexing: far cheaper on the CPU for 1-D gathers
        n_rows = b - a
        counts = torch.bincount(rows, minlength=n_rows)
        width = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        flat = rows * width + torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)
        pad_keys = torch.full((n_rows * width,), INT64_MIN, dtype=torch.int64, device=rows.device)
        pad_docs = torch.full((n_rows * width,), -1, dtype=torch.int64, device=rows.device)
        pad_keys = pad_keys.index_copy_(0, flat, keys).view(n_rows, width)
        pad_docs = pad_docs.index_copy_(0, flat, docs).view(n_rows, width)
        all_keys = torch.cat([self.keys[a:b], pad_keys], dim=1)
        all_docs = torch.cat([self.docs[a:b], pad_docs], dim=1)
        top, sel = torch.topk(all_keys, self.k, dim=1)
        self.keys[a:b] = top
        self.docs[a:b] = all_docs.gather(1, sel)
        last = top[:, -1]
        full = last != INT64_MIN
        self.full[a:b] = full
        self.tau[a:b] = torch.where(full, decode_scores(last), torch.full_like(self.tau[a:b], -math.inf))


def _excluded_pairs(
    exclude: torch.Tensor | None,
    a: int,
    b: int,
    chunk_docs_sorted: torch.Tensor | None,
    chunk_perm: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(row, column) of each query in ``[a, b)`` whose excluded corpus index lies in this chunk."""
    if exclude is None or chunk_docs_sorted is None or chunk_perm is None:
        return None
    ex = exclude[a:b]
    pos = torch.searchsorted(chunk_docs_sorted, ex).clamp(max=chunk_docs_sorted.numel() - 1)
    hit = (chunk_docs_sorted[pos] == ex) & (ex >= 0)
    if not bool(hit.any()):
        return None
    rows = torch.nonzero(hit).flatten()
    return rows, chunk_perm[pos[rows]]


def _as_tensor(vectors: Any, device: torch.device) -> torch.Tensor:
    if isinstance(vectors, torch.Tensor):
        return vectors.to(device=device, dtype=torch.float32)
    array = np.asarray(vectors)
    with warnings.catch_warnings():  # read-only memory maps: we never write into them
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(device=device, dtype=torch.float32)


def sparse_nonzero(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the True entries of a 2-D mask, row-major. On the CPU the mask is scanned as 64-bit
    words first: candidates are sparse, and this is several times cheaper than ``nonzero`` on bytes."""
    n_cols = mask.shape[1]
    flat = mask.reshape(-1)
    if mask.device.type == "cpu" and flat.numel() % 8 == 0 and flat.numel() >= 4096:
        words = torch.nonzero(flat.view(torch.uint8).view(torch.int64)).flatten()
        if words.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        positions = (words[:, None] * 8 + torch.arange(8)).flatten()
        hits = positions.masked_select(flat.index_select(0, positions))
    else:
        hits = torch.nonzero(flat).flatten()
    return torch.div(hits, n_cols, rounding_mode="floor"), hits % n_cols


_GROUP = 32  # columns per group in the two-level candidate scan


_TILE = 1024  # document rows per matrix-product tile: its output is still in cache when the group max reads it


def _candidates_positive(
    d16: torch.Tensor, q16_t: torch.Tensor, lower: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, document) pairs whose bf16 score ``d16 @ q16_t`` reaches the query's positive bf16 threshold.

    Scores are laid out documents x queries and computed in tiles of ``_TILE`` documents; right after each
    tile, an integer maximum over groups of 32 documents runs down its columns (a cheap vertical pass over data
    still in cache). For a positive threshold the test is the same on the raw 16-bit patterns read as int16
    (non-negative floats order like their bit patterns; negative ones read as negative integers, below any
    positive threshold). Only the groups that reach a query's threshold are looked into: a few per query and
    chunk.
    """
    n_docs, n_queries = d16.shape[0], q16_t.shape[1]
    approx = torch.empty((n_docs, n_queries), dtype=torch.bfloat16, device=d16.device)
    bits = approx.view(torch.int16)
    group_max = torch.empty((n_docs // _GROUP, n_queries), dtype=torch.int16, device=d16.device)
    for s in range(0, n_docs, _TILE):
        e = min(n_docs, s + _TILE)
        torch.mm(d16[s:e], q16_t, out=approx[s:e])  # bf16 in, fp32 accumulation, bf16 out
        torch.amax(bits[s:e].view((e - s) // _GROUP, _GROUP, n_queries), 1, out=group_max[s // _GROUP : e // _GROUP])
    limit = lower.view(torch.int16)
    groups, queries = sparse_nonzero(group_max >= limit[None, :])
    if groups.numel() == 0:
        return queries, groups
    # flat positions of each candidate group's values (int32 indices: half the memory traffic of int64)
    offsets = torch.arange(0, _GROUP * n_queries, n_queries, dtype=torch.int32, device=d16.device)
    base = (groups * (_GROUP * n_queries) + queries).to(torch.int32)
    values = bits.reshape(-1).index_select(0, (base[:, None] + offsets[None, :]).reshape(-1)).view(-1, _GROUP)
    hit, offset = torch.nonzero(values >= limit.index_select(0, queries)[:, None], as_tuple=True)
    return queries.index_select(0, hit), groups.index_select(0, hit) * _GROUP + offset


def _candidates_mm(d16: torch.Tensor, q16_t: torch.Tensor, lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, document) pairs whose bf16 score (``torch.mm``, bf16 out) reaches the bf16 bound ``lower``."""
    if d16.shape[0] % _GROUP == 0 and bool((lower > 0).all()):
        return _candidates_positive(d16, q16_t, lower)
    approx_t = torch.mm(d16, q16_t)  # documents x queries, bf16
    cols, rows = sparse_nonzero(approx_t >= lower[None, :])
    return rows, cols


@contextlib.contextmanager
def _exact_matmuls(device: torch.device) -> Iterator[None]:
    """fp32 products in full fp32, as exactness and the bf16 prefilter's error bound assume: no TF32 on CUDA, and
    no bf16 passes on the CPU (``torch.set_float32_matmul_precision("medium")`` has oneDNN compute fp32 products,
    einsum's included, in bf16). On CUDA also bf16 products accumulated in fp32 throughout (no reduced-precision
    split-K). The caller's settings come back afterwards."""
    # torch >= 2.9 keeps a precision per backend beside the legacy global one: both are saved and restored
    backends = [
        m for m in (getattr(torch.backends.mkldnn, "matmul", None), torch.backends.cuda.matmul)
        if m is not None and hasattr(m, "fp32_precision")
    ]
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # per-backend settings that no single legacy value describes
        legacy = None
    per_backend = [(m, m.fp32_precision) for m in backends]
    cuda = torch.backends.cuda.matmul
    split_k = cuda.allow_bf16_reduced_precision_reduction if device.type == "cuda" else None
    torch.set_float32_matmul_precision("highest")  # every backend to full fp32, legacy reads stay consistent
    if split_k is not None:
        cuda.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        if split_k is not None:
            cuda.allow_bf16_reduced_precision_reduction = split_k
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for m, value in per_backend:
            m.fp32_precision = value


def _not_finite(what: str, x: torch.Tensor, labels: torch.Tensor | None = None) -> ValueError:
    bad = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten()
    if bad.numel() == 0:  # not expected: only NaN or inf make the norms non-finite
        return ValueError(f"the {what} vectors' norms are not finite")
    row = int(bad[0])
    name = f"query {row}" if labels is None else f"document with corpus index {int(labels[row])}"
    more = f" (and {bad.numel() - 1} more in this batch)" if bad.numel() > 1 else ""
    return ValueError(f"{name} has NaN or inf values{more}: {what} vectors must be finite to be searched")


def _max_row_norm(x: torch.Tensor) -> float:
    """The largest row norm of ``x`` (NaN or inf where ``x`` has NaN or inf): in fp32 where that is exact
    enough, else in float64. fp32 squares underflow below ~1e-19 (a rounding residual's norm would come out 0,
    and the bound too small) and overflow above ~1e19."""
    value = float(torch.linalg.vector_norm(x, dim=1).max())
    if 2.0**-40 <= value < 2.0**40:  # no square overflowed; underflowed ones (each < 2^-149) are a negligible share
        return value
    return float(torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).max())


def exact_search(
    queries: Any,
    chunks: Iterable[tuple[Any, Any]] | Callable[[], Iterable[tuple[Any, Any]]],
    *,
    top_k: int,
    id_rank: Any,
    similarity: str = "cosine",
    exclude: Any = None,
    device: str | torch.device | None = None,
    query_block: int | None = None,
    prefilter: str = "auto",
    stats: SearchStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of each query over a corpus given as chunks.

    ``queries``: ``[Q, dim]``. ``chunks``: ``(vectors [n, dim], corpus indices [n])`` pairs covering the corpus
    once, in any order; a sequence of them, or a callable that returns them afresh (the same chunks each time),
    can be read twice, which enables the admission floor (module docstring). ``id_rank[i]``: corpus index
    ``i``'s place in ascending id order (ties go to the larger). ``exclude[q]``: a corpus index never returned
    for query ``q`` (-1: none). Returns ``scores [Q, k]`` (float32, descending) and ``indices [Q, k]`` (int64;
    -1 where the corpus has fewer than k documents). Raises ``ValueError`` for a query or document vector with
    NaN or inf (after normalisation, for cosine).
    """
    start_time = time.perf_counter()
    stats = stats if stats is not None else SearchStats()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be cosine or dot, got {similarity!r}")
    if prefilter not in ("auto", "amx", "bf16", "none"):
        raise ValueError(f"prefilter must be auto, amx, bf16 or none, got {prefilter!r}")
    with torch.inference_mode(), _exact_matmuls(dev):
        q = _as_tensor(queries, dev)
        if similarity == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
        q_norm = torch.linalg.vector_norm(q, dim=1, dtype=torch.float64)  # for the overflow test (float64: no overflow)
        if q.shape[0] and not math.isfinite(float(q_norm.max())):
            raise _not_finite("query", q)
        k = int(top_k)
        rank_t = torch.as_tensor(np.asarray(id_rank, dtype=np.int64), device=dev)
        exclude_t = torch.as_tensor(np.asarray(exclude, dtype=np.int64), device=dev) if exclude is not None else None
        block = int(query_block or (8192 if dev.type == "cuda" else 4096))
        kernel = _amx_kernel(prefilter, dev)
        use_bf16 = kernel is not None or prefilter == "bf16" or (prefilter == "auto" and bf16_is_fast(dev))
        stats.prefilter = "amx" if kernel is not None else "bf16" if use_bf16 else "none"
        bf16 = _bf16_queries(q, block, kernel) if use_bf16 else None
        reopen: Callable[[], Iterable[tuple[Any, Any]]] | None = None
        if callable(chunks):
            reopen = chunks
        elif isinstance(chunks, Sequence):
            reopen = lambda: iter(chunks)  # noqa: E731
        first = reopen() if reopen is not None else chunks
        state, corpus_bound = _one_pass(
            q, q_norm, first, k, rank_t, exclude_t, block, bf16, similarity, stats, guess=reopen is not None
        )
        failed = torch.nonzero(~state.certified()).flatten()
        stats.uncertified += int(failed.numel())
        if failed.numel() and reopen is not None:  # the floor was too high for these: search them again without
            few = q.index_select(0, failed)
            # a handful of queries: plain fp32 products cost less than converting every chunk to bf16
            again_bf16 = _bf16_queries(few, block, kernel) if use_bf16 and few.shape[0] >= 64 else None
            again, _ = _one_pass(
                few, q_norm.index_select(0, failed), reopen(), k, rank_t,
                exclude_t.index_select(0, failed) if exclude_t is not None else None,
                block, again_bf16, similarity, stats, guess=False, known_bound=corpus_bound,
            )
            state.keys[failed], state.docs[failed] = again.keys, again.docs
        scores_out = decode_scores(state.keys).cpu().numpy()
        docs_out = state.docs.cpu().numpy()
    scores_out[docs_out < 0] = -np.inf
    stats.seconds += time.perf_counter() - start_time
    return scores_out, docs_out


def _amx_kernel(prefilter: str, dev: torch.device) -> amx.ThresholdKernel | None:
    if dev.type != "cpu" or prefilter not in ("auto", "amx"):
        return None
    kernel = amx.load()
    if kernel is None and prefilter == "amx":
        raise ValueError(f"prefilter=amx: the AMX kernel cannot run here ({amx.unavailable_reason()})")
    return kernel


@dataclass
class _Bf16Queries:
    """The queries in bf16 per block (transposed for ``torch.mm``, or packed for the AMX kernel), with the exact
    norms (float64) of the rounding residuals and of the rounded vectors (the error bound needs both)."""

    blocks: list[Any]
    err: torch.Tensor
    norm: torch.Tensor
    kernel: amx.ThresholdKernel | None


def _bf16_queries(q: torch.Tensor, block: int, kernel: amx.ThresholdKernel | None) -> _Bf16Queries:
    q16 = q.to(torch.bfloat16)
    q16f = q16.float()
    starts = range(0, q.shape[0], block)
    if kernel is not None:
        blocks: list[Any] = [kernel.pack_queries(q16[a : a + block]) for a in starts]
    else:
        blocks = [q16[a : a + block].t().contiguous() for a in starts]
    # float64: fp32 squares of tiny residuals underflow to 0, of huge values overflow
    err = torch.linalg.vector_norm(q - q16f, dim=1, dtype=torch.float64)
    return _Bf16Queries(blocks, err, torch.linalg.vector_norm(q16f, dim=1, dtype=torch.float64), kernel)


def _one_pass(
    q: torch.Tensor,
    q_norm: torch.Tensor,
    chunks: Iterable[tuple[Any, Any]],
    k: int,
    rank_t: torch.Tensor,
    exclude_t: torch.Tensor | None,
    block: int,
    bf16: _Bf16Queries | None,
    similarity: str,
    stats: SearchStats,
    *,
    guess: bool,
    known_bound: float | None = None,
) -> tuple[_TopK, float]:
    """One read of the corpus. With ``guess``, the first chunk also sets each query's admission floor: its
    j-th best score there, j chosen so that about 3k documents of the whole corpus are expected above it (if the
    chunk is a fair sample). Fewer candidates reach the rescoring and the merges; a query whose floor proves too
    high (fewer than k documents above it) is left uncertified for the caller to search again.

    Returns the top-k and a bound on the corpus' row norms; ``known_bound``, one from an earlier read of the
    same chunks, spares a read without prefilter the check of each chunk (finite values, their bound)."""
    state = _TopK(q.shape[0], k, q.device)
    corpus_bound = 0.0
    n_corpus = rank_t.numel()
    stats.passes += 1
    for vectors, indices in chunks:
        d = _as_tensor(vectors, q.device)
        n = d.shape[0]
        if n == 0:
            continue
        if similarity == "cosine":
            d = torch.nn.functional.normalize(d, dim=-1)
        doc_index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=q.device)
        # a chunk under 1/8 of the corpus: the guess rank j then stays well under k (no guess otherwise)
        j = math.ceil(3 * k * n / n_corpus) if guess and 8 * n <= n_corpus else None
        bound = _search_chunk(
            state, q, q_norm, d, doc_index, rank_t[doc_index], exclude_t, block, stats, bf16, j, known_bound
        )
        corpus_bound = max(corpus_bound, bound)
        guess = False  # the first chunk only
    return state, corpus_bound


def _search_chunk(
    state: _TopK,
    q: torch.Tensor,
    q_norm: torch.Tensor,
    d: torch.Tensor,
    doc_index: torch.Tensor,
    doc_rank: torch.Tensor,
    exclude_t: torch.Tensor | None,
    block: int,
    stats: SearchStats,
    bf16: _Bf16Queries | None,
    guess: int | None = None,
    known_bound: float | None = None,
) -> float:
    """Merges the chunk's candidates into ``state``; returns a bound on the chunk's row norms."""
    n, dim = d.shape
    k = state.k
    stats.chunks += 1
    stats.documents += n
    sorted_docs, perm = doc_index.sort() if exclude_t is not None else (None, None)
    d_t: torch.Tensor | None = None  # [dim, n] fp32, built only if a block needs exact products
    gamma = dim * 2.0**-24 / (1 - dim * 2.0**-24)  # relative error bound of fp32 accumulation over `dim`
    if bf16 is not None:
        if bf16.kernel is not None:
            d16_padded, d_norm_max, d_err_max = bf16.kernel.to_bf16(d)
        else:
            d16 = d.to(torch.bfloat16)
            residual = d16.float().sub_(d)  # in place: one temporary, not two
            d_err_max = _max_row_norm(residual)
            del residual
            d_norm_max = _max_row_norm(d)
        d16_norm_max = d_norm_max + d_err_max  # triangle inequality: one pass over the chunk fewer
        d_bound = d16_norm_max
    elif known_bound is not None:  # an earlier read of these chunks checked them
        d_norm_max = d_bound = known_bound
    else:
        low, high = (float(v) for v in torch.aminmax(d))  # one pass, no copy: cheaper than the norms
        d_norm_max = d_bound = max(-low, high) * math.sqrt(dim) if math.isfinite(low + high) else math.nan
    if not math.isfinite(d_norm_max):  # only NaN or inf in d makes it so (float64 squares do not overflow)
        raise _not_finite("document", d, doc_index)
    for block_no, a in enumerate(range(0, q.shape[0], block)):
        b = min(q.shape[0], a + block)
        excluded = _excluded_pairs(exclude_t, a, b, sorted_docs, perm)
        all_full = state.has_bar(a, b)
        # fp32 and bf16 partial sums stay below |q| |d| (1 + 2^-7), rounding included: under 2^127 none overflows
        may_overflow = float(q_norm[a:b].max()) * d_bound * (1 + 2.0**-7) >= 2.0**127
        eps = None
        if bf16 is not None and not may_overflow:
            # A document can enter only if its fp32 score s >= tau. Its bf16-input product acc (accumulated in
            # fp32) satisfies acc >= s - eps, eps = the inputs' rounding (exact residual norms) plus two fp32
            # accumulation errors, plus what bf16 hardware drops by reading subnormal inputs as zero (entries
            # below 2^-126: at most sqrt(dim) 2^-126 in norm on either side), x1.25 for safety. In float64.
            qn = bf16.norm[a:b]
            subnormal = math.sqrt(dim) * 2.0**-126
            eps = (
                bf16.err[a:b] * d_norm_max + qn * d_err_max + 2.5 * gamma * qn * d16_norm_max
                + subnormal * (qn + d16_norm_max)
            ) * 1.25 + 1e-7
            if not bool(torch.isfinite(eps).all()):  # a value that rounds to inf in bf16: no bound
                eps = None
        if not all_full and guess is not None and eps is not None and bf16.kernel is not None and n // 32 > guess:
            # The floor from the kernel's maxima per 32 documents: their guess-th largest is at most the
            # guess-th best score (a floor is only a guess; the certificate keeps the result exact). This chunk
            # then takes the fused path too, instead of fp32 products and a full top-k.
            group_max = bf16.kernel.group_max(d16_padded, bf16.blocks[block_no], n)
            floor = torch.topk(group_max, guess, dim=0).values[-1]
            state.floor[a:b] = torch.maximum(state.floor[a:b], floor)
            all_full = state.has_bar(a, b)
        if not all_full or eps is None:
            if b - a < 256:  # a few queries (a floor's second round): the chunk as it is, no transposed copy
                scores = torch.mm(d, q[a:b].t()).t().contiguous()
            else:
                if d_t is None:
                    d_t = d.t().contiguous()  # the layout the CPU matmul kernels read fastest
                scores = torch.mm(q[a:b], d_t)
            if may_overflow:  # NaN: +inf and -inf met in one sum; it ranks last, as -inf
                scores.masked_fill_(torch.isnan(scores), -math.inf)
            if excluded is not None:
                scores[excluded[0], excluded[1]] = -math.inf
            thr = state.bar(a, b)
            if not all_full:
                # a document below the chunk's own k-th score has k better ones here: it cannot enter
                top = torch.topk(scores, min(k, n), dim=1).values
                thr = torch.maximum(thr, top[:, -1])
                stats.dense_blocks += 1
                if guess is not None and guess < top.shape[1]:
                    # documents scoring above this chunk's guess-th are expected to number about 3k in the corpus
                    state.floor[a:b] = torch.maximum(state.floor[a:b], top[:, guess - 1])
            else:
                stats.filtered_blocks += 1
            rows, cols = sparse_nonzero(scores >= thr[:, None])
            exact = scores.view(-1).index_select(0, rows * n + cols)
        else:
            stats.filtered_blocks += 1
            # The bf16 output rounds acc to nearest, off by at most 2^-8 |acc| (8-bit significand), so
            # approx >= L - 2^-8 |L| with L = tau - eps; that bound is then rounded down to a bf16 value (a 2^-7
            # relative step covers the conversion's own rounding).
            lower = state.bar(a, b).double() - eps
            if bf16.kernel is not None:
                # the kernel tests its fp32 accumulators (no bf16 output rounding); 2^-22 covers the conversion's
                lower = (lower - lower.abs() * 2.0**-22).float()
                rows, cols = bf16.kernel.hits(d16_padded, bf16.blocks[block_no], lower, n)
            else:
                lower = lower - lower.abs() * 2.0**-8
                lower = (lower - lower.abs() * 2.0**-7).to(torch.bfloat16)
                rows, cols = _candidates_mm(d16, bf16.blocks[block_no], lower)
            order = torch.argsort(rows, stable=True)  # the merge wants candidates grouped by query
            rows, cols = rows.index_select(0, order), cols.index_select(0, order)
            stats.prefilter_candidates += int(rows.numel())
            if excluded is not None and rows.numel():
                keep = exclude_t.index_select(0, rows + a) != doc_index.index_select(0, cols)
                rows, cols = rows[keep], cols[keep]
            # the exact fp32 score of each candidate; only those that reach the threshold go on
            exact = torch.einsum("ij,ij->i", q.index_select(0, rows + a), d.index_select(0, cols))
            keep = torch.nonzero(exact >= state.bar(a, b).index_select(0, rows)).flatten()
            rows, cols, exact = rows.index_select(0, keep), cols.index_select(0, keep), exact.index_select(0, keep)
        stats.candidates += int(rows.numel())
        keys = compose_keys(exact, doc_rank.index_select(0, cols))
        state.merge(a, b, rows, keys, doc_index.index_select(0, cols))
    return d_bound


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced one ahead in a thread: reading and checksumming the next shards (numpy copies and
    zlib release the GIL) overlaps the matrix products on the current chunk."""
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                box.put((True, item))
        except BaseException as exc:  # handed to the consumer, raised there
            box.put((False, exc))
        box.put((True, done))

    threading.Thread(target=produce, name="harness-prefetch", daemon=True).start()
    while True:
        ok, item = box.get()
        if not ok:
            raise item
        if item is done:
            return
        yield item


# -- mteb's SearchProtocol ---------------------------------------------------------------------------------------
class StreamingSearch:
    """mteb's SearchProtocol over an embedding adapter: mteb gives the corpus (``index``) and the queries
    (``search``); the adapter encodes (its instructions, its cache entry), and the corpus is searched shard by
    shard from the cache. Only rank 0 searches; other ranks encode their share and return empty runs.

    ``ignore_identical_ids``: the task's convention (ArguAna, Quora...): a query's own id is never retrieved,
    and the top-k is filled from the documents after it (as BEIR and mteb 1.x did), instead of being cut to
    k-1 afterwards. ``timings``: seconds per phase, summed over splits and subsets (``encode_queries``,
    ``encode_corpus``, ``search``).
    """

    def __init__(
        self,
        adapter: Any,
        *,
        ignore_identical_ids: bool = False,
        device: str | None = None,
        chunk_rows: int | None = None,
        query_block: int | None = None,
        prefilter: str = "auto",
        timings: dict[str, float] | None = None,
    ):
        self.adapter = adapter
        self.ignore_identical_ids = ignore_identical_ids
        self.device = device
        self.chunk_rows = chunk_rows
        self.query_block = query_block
        self.prefilter = prefilter
        self.timings = timings if timings is not None else {}
        self.stats: list[SearchStats] = []
        self._corpus: Any = None

    @property
    def mteb_model_meta(self) -> Any:
        return self.adapter.mteb_model_meta

    def _add_time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def index(
        self,
        corpus: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        encode_kwargs: Mapping[str, Any],
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> None:
        # encoding waits for search(): with top_ranked (reranking) only the candidates need vectors
        self._corpus = corpus

    def _texts(self, dataset: Any, task_metadata: Any, prompt_type: Any, batch_size: int, num_proc: int | None) -> Any:
        from mteb._create_dataloaders import create_dataloader

        return create_dataloader(
            dataset, task_metadata=task_metadata, prompt_type=prompt_type, batch_size=batch_size, num_proc=num_proc
        )

    def search(
        self,
        queries: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        top_k: int,
        encode_kwargs: Mapping[str, Any],
        top_ranked: Mapping[str, Sequence[str]] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, float]]:
        from mteb.types import PromptType

        from harness.engine.distributed import context

        if self._corpus is None:
            raise ValueError("the corpus must be indexed before searching")
        batch_size = int(encode_kwargs.get("batch_size") or 32)
        where = {"task_metadata": task_metadata, "hf_split": hf_split, "hf_subset": hf_subset}

        start = time.perf_counter()
        loader = self._texts(queries, task_metadata, PromptType.query, batch_size, num_proc)
        query_vectors = np.asarray(
            self.adapter.encode(loader, prompt_type=PromptType.query, **where, **dict(encode_kwargs)), dtype=np.float32
        )
        query_ids = [str(i) for i in queries["id"]]
        self._add_time("encode_queries", time.perf_counter() - start)

        corpus = self._corpus
        corpus_ids = [str(i) for i in corpus["id"]]
        if top_ranked is not None:  # reranking: only the candidates are encoded and scored
            wanted = {doc for qid in query_ids for doc in top_ranked.get(qid, ())}
            keep = [i for i, doc in enumerate(corpus_ids) if doc in wanted]
            corpus = corpus.select(keep)
            corpus_ids = [corpus_ids[i] for i in keep]

        start = time.perf_counter()
        loader = self._texts(corpus, task_metadata, PromptType.document, batch_size, num_proc)
        encoded = self._encode_corpus(loader, where, encode_kwargs, task_metadata)
        self._add_time("encode_corpus", time.perf_counter() - start)
        if not context().is_main:
            return {qid: {} for qid in query_ids}

        start = time.perf_counter()
        similarity = str(getattr(self.adapter, "similarity_fn", "cosine"))
        if top_ranked is not None:
            results = _rerank(query_vectors, query_ids, encoded.dense(), corpus_ids, top_ranked, top_k, similarity)
        else:
            results = self._full_search(query_vectors, query_ids, encoded, corpus_ids, top_k, similarity)
        self._add_time("search", time.perf_counter() - start)
        return results

    def _encode_corpus(self, loader: Any, where: Mapping[str, Any], encode_kwargs: Mapping[str, Any], meta: Any) -> Any:
        from mteb.types import PromptType

        from harness.engine.encode import EncodedTexts, EncodeRecord

        texts = [text for batch in loader for text in batch["text"]]
        encode_corpus = getattr(self.adapter, "encode_corpus", None)
        own_encode = getattr(type(self.adapter), "encode", None)
        from harness.models.base import EmbeddingAdapter

        if encode_corpus is not None and own_encode is EmbeddingAdapter.encode:
            return encode_corpus(texts, task=meta.name, task_type=meta.type, batch_size=encode_kwargs.get("batch_size"))
        # an adapter with its own encode(): honour it, and search its vectors as one in-memory chunk
        vectors = np.asarray(
            self.adapter.encode(loader, prompt_type=PromptType.document, **where, **dict(encode_kwargs)),
            dtype=np.float32,
        )
        n = len(vectors)
        record = EncodeRecord(role="document", texts=n, shards=1, shards_encoded=1)
        return EncodedTexts(n, np.arange(n), max(n, 1), None, {0: vectors}, None, record)

    def _full_search(
        self, query_vectors: np.ndarray, query_ids: list[str], encoded: Any, corpus_ids: list[str], top_k: int,
        similarity: str,
    ) -> dict[str, dict[str, float]]:
        device = self.device or str(getattr(self.adapter, "device", "cpu"))
        dev = torch.device(device)
        chunk_rows = int(self.chunk_rows or (65536 if dev.type == "cuda" else 32768))
        exclude = None
        if self.ignore_identical_ids:
            position = {doc: i for i, doc in enumerate(corpus_ids)}
            exclude = np.array([position.get(qid, -1) for qid in query_ids], dtype=np.int64)
        stats = SearchStats()
        scores, indices = exact_search(
            query_vectors,
            lambda: prefetch(encoded.chunks(chunk_rows)),  # re-readable: a query whose floor fails is searched again
            top_k=min(int(top_k), len(corpus_ids)),
            id_rank=id_ranks(corpus_ids),
            similarity=similarity,
            exclude=exclude,
            device=dev,
            query_block=self.query_block,
            prefilter=self.prefilter,
            stats=stats,
        )
        self.stats.append(stats)
        names = np.asarray(corpus_ids, dtype=object)
        results: dict[str, dict[str, float]] = {}
        for row, qid in enumerate(query_ids):
            valid = indices[row] >= 0
            results[qid] = dict(zip(names[indices[row][valid]].tolist(), scores[row][valid].tolist(), strict=True))
        return results


def _rerank(
    query_vectors: np.ndarray,
    query_ids: list[str],
    doc_vectors: np.ndarray,
    corpus_ids: list[str],
    top_ranked: Mapping[str, Sequence[str]],
    top_k: int,
    similarity: str,
) -> dict[str, dict[str, float]]:
    """Each query's candidates scored and cut to ``top_k`` (ties by id, descending)."""
    position = {doc: i for i, doc in enumerate(corpus_ids)}
    q = torch.from_numpy(query_vectors)
    d = torch.from_numpy(doc_vectors)
    if similarity == "cosine":
        q = torch.nn.functional.normalize(q, dim=-1)
        d = torch.nn.functional.normalize(d, dim=-1)
    results: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(query_ids):
        candidates = [doc for doc in dict.fromkeys(top_ranked.get(qid, ())) if doc in position]
        if not candidates:
            results[qid] = {}
            continue
        scores = (d[[position[doc] for doc in candidates]] @ q[row]).tolist()
        ranked = sorted(zip(scores, candidates, strict=True), reverse=True)[:top_k]
        results[qid] = {doc: float(score) for score, doc in ranked}
    return results
