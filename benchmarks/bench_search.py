"""Exact search at scale: our streaming search against mteb's search path, fed the same embeddings.

    python benchmarks/bench_search.py [--docs 1000000] [--queries 10000] [--dim 384] [--top-k 100]
                                      [--workdir /tmp/bench_search] [--order ours,mteb]

Data: a synthetic clustered corpus (unit vectors around 2,000 centres, so scores spread like real embeddings)
and queries that are perturbed documents; float32, written once to ``--workdir``: as our embedding-cache shards
(exactly what a cold ``harness run`` leaves behind) and as one ``.npy`` for mteb.

Each side runs in its own process (peak RSS is per process), timed from embeddings-on-disk to the
``{query: {doc: score}}`` dict:
* ours: ``StreamingSearch._full_search`` (the run path's search: shards streamed from the cache, running top-k),
  with the glibc allocator settings ``harness run`` applies (``harness/engine/memory.py``).
* mteb: ``mteb.models.search_wrappers.chunked_full_corpus_search``, the function ``SearchEncoderWrapper`` runs
  (50k-document chunks, mteb's ``cos_sim``, ``torch.topk(k+1)``, a Python heap per query), with the chunk
  "encoder" returning the stored embeddings. mteb's per-chunk dataloader construction is skipped (a
  no-op stand-in) so that only the search itself is compared: this favours mteb.

Reported: wall, peak RSS (and its ratio to the float32 corpus matrix), and top-k overlap (plain, and up to
ties: a differing document whose score equals the k-th score within 1e-6 counts as a tie). The last line is
``SUMMARY speedup=… rss_ratio=… overlap=…`` (speedup = mteb wall / ours; rss_ratio = our peak RSS / corpus
matrix bytes; overlap up to ties).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARD_ROWS = 4096
KEY = {"model": {"name": "synthetic"}, "role": "document", "prefix": ""}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_data(work: Path, docs: int, queries: int, dim: int) -> None:
    """Clustered unit vectors, in chunks (never the whole corpus in memory twice)."""
    marker = work / f"data-{docs}-{queries}-{dim}.done"
    if marker.exists():
        return
    from harness.engine.cache import EmbeddingCache

    rng = np.random.default_rng(1234)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    corpus = np.lib.format.open_memmap(work / "corpus.npy", mode="w+", dtype=np.float32, shape=(docs, dim))
    entry = EmbeddingCache(work / "cache").entry(KEY, _digests(docs), SHARD_ROWS, label="synthetic")
    for start in range(0, docs, SHARD_ROWS):
        end = min(docs, start + SHARD_ROWS)
        x = centres[rng.integers(0, len(centres), end - start)] + 1.5 * rng.standard_normal((end - start, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        corpus[start:end] = x
        entry.write_shard(start // SHARD_ROWS, x.astype(np.float32))
    corpus.flush()
    q = np.array(corpus[rng.integers(0, docs, queries)]) + 0.05 * rng.standard_normal((queries, dim))
    np.save(work / "queries.npy", q.astype(np.float32))
    del corpus
    marker.write_text("ok")


def _digests(n: int) -> np.ndarray:
    from harness.engine.cache import text_digests

    return text_digests([f"doc{i}" for i in range(n)])


def worker_ours(work: Path, docs: int, top_k: int) -> dict[str, Any]:
    from harness.engine.cache import EmbeddingCache
    from harness.engine.encode import EncodedTexts, EncodeRecord
    from harness.engine.memory import tune_cpu_allocator
    from harness.engine.search import StreamingSearch

    tune_cpu_allocator()  # as `harness run` does (HARNESS_MALLOC_TUNING=0 to measure without)

    queries = np.load(work / "queries.npy")
    ids = [f"doc{i}" for i in range(docs)]
    qids = [f"q{i}" for i in range(len(queries))]
    digests = _digests(docs)
    base_rss = peak_rss_bytes()
    start = time.perf_counter()
    entry = EmbeddingCache(work / "cache").entry(KEY, digests, SHARD_ROWS, label="synthetic")
    record = EncodeRecord(role="document", texts=docs, shards=entry.n_shards, shards_cached=entry.n_shards)
    encoded = EncodedTexts(docs, np.arange(docs), SHARD_ROWS, entry, {}, None, record)
    search = StreamingSearch(SimpleNamespace(device="cpu", similarity_fn="cosine"))
    results = search._full_search(queries, qids, encoded, ids, top_k, "cosine")
    wall = time.perf_counter() - start
    stats = search.stats[0]
    return {"wall": wall, "results": results, "base_rss": base_rss, "extra": {
        "prefilter": stats.prefilter, "candidates_per_query": stats.candidates / len(queries),
        "prefilter_candidates_per_query": stats.prefilter_candidates / len(queries),
        "passes": stats.passes, "uncertified": stats.uncertified,
    }}


def worker_mteb(work: Path, docs: int, top_k: int) -> dict[str, Any]:
    import torch
    from mteb.models import search_wrappers
    from mteb.similarity_functions import cos_sim

    corpus = np.load(work / "corpus.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    ids = [f"doc{i}" for i in range(docs)]

    class Corpus:
        """What chunked_full_corpus_search touches of a datasets.Dataset: len, select(range), ["id"]."""

        def __init__(self, start: int, end: int):
            self.start, self.end = start, end

        def __len__(self) -> int:
            return self.end - self.start

        def select(self, rows: range) -> Corpus:
            return Corpus(self.start + rows.start, self.start + rows.stop)

        def __getitem__(self, column: str) -> list[str]:
            return ids[self.start : self.end]

    # the chunk's "dataloader" is the chunk itself: mteb's dataset plumbing is left out of the timing
    search_wrappers.create_dataloader = lambda dataset, **kwargs: dataset

    def encode(chunk: Corpus, **kwargs: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(corpus[chunk.start : chunk.end]))

    base_rss = peak_rss_bytes()
    start = time.perf_counter()
    heaps = search_wrappers.chunked_full_corpus_search(
        task_corpus=Corpus(0, docs), corpus_chunk_size=50_000,
        query_idx_to_id={i: f"q{i}" for i in range(len(queries))}, query_embeddings=queries,
        task_metadata=None, hf_subset="default", hf_split="test", top_k=top_k,
        encode_kwargs={"batch_size": 32, "show_progress_bar": False}, encode_fn=encode, similarity_fn=cos_sim,
        search_k_offset=1,  # as SearchEncoderWrapper calls it
    )
    results = {qid: {doc: score for score, doc in heap} for qid, heap in heaps.items()}  # as its search() does
    wall = time.perf_counter() - start
    return {"wall": wall, "results": results, "base_rss": base_rss, "extra": {}}


def run_worker(which: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", which, "--docs", str(args.docs), "--queries", str(args.queries),
           "--dim", str(args.dim), "--top-k", str(args.top_k), "--workdir", args.workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{which} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def overlap(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], k: int) -> tuple[float, float]:
    """Mean |A∩B|/k, and the same counting a differing document as shared when its score ties the k-th."""
    plain = tied = 0.0
    for qid, ra in a.items():
        rb = b[qid]
        common = set(ra) & set(rb)
        plain += len(common) / k
        kth = min(min(ra.values()), min(rb.values()))
        ties = sum(1 for doc in set(ra) - common if abs(ra[doc] - kth) <= 1e-6)
        tied += min(k, len(common) + ties) / k
    return plain / len(a), tied / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--workdir", default="/tmp/bench_search")
    parser.add_argument("--order", default="ours,mteb")
    parser.add_argument("--worker", choices=["ours", "mteb"])
    args = parser.parse_args()
    work = Path(args.workdir)

    if args.worker:
        out = (worker_ours if args.worker == "ours" else worker_mteb)(work, args.docs, args.top_k)
        results = out.pop("results")
        (work / f"{args.worker}.json").write_text(json.dumps(results))
        print(json.dumps({**out, "peak_rss": peak_rss_bytes()}))
        return

    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    make_data(work, args.docs, args.queries, args.dim)
    matrix = args.docs * args.dim * 4
    print(f"data: {args.docs:,} x {args.dim} float32 ({matrix / 2**30:.2f} GiB), {args.queries:,} queries, "
          f"top-{args.top_k} (ready in {time.perf_counter() - start:.0f} s)", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "mteb": []}
    for which in args.order.split(","):  # e.g. ours,mteb,ours,mteb: alternating, machine drift hits both
        r = run_worker(which, args)
        runs[which].append(r)
        print(f"{which:5s} wall {r['wall']:8.1f} s   peak RSS {r['peak_rss'] / 2**30:5.2f} GiB "
              f"({r['peak_rss'] / matrix:.2f}x the corpus matrix; {r['base_rss'] / 2**30:.2f} GiB before search) "
              f"{r['extra'] or ''}", flush=True)
    ours = json.loads((work / "ours.json").read_text())
    theirs = json.loads((work / "mteb.json").read_text())
    plain, tied = overlap(ours, theirs, args.top_k)
    ours_wall = statistics.median(r["wall"] for r in runs["ours"])
    mteb_wall = statistics.median(r["wall"] for r in runs["mteb"])
    print(f"median wall: ours {ours_wall:.1f} s, mteb {mteb_wall:.1f} s")
    speedup = mteb_wall / ours_wall
    rss_ratio = max(r["peak_rss"] for r in runs["ours"]) / matrix
    runs = {name: r[-1] for name, r in runs.items()}  # type: ignore[misc]
    print(f"top-{args.top_k} overlap {plain:.6f} (up to ties {tied:.6f}); "
          f"mteb peak RSS {runs['mteb']['peak_rss'] / matrix:.2f}x the corpus matrix")
    print(f"SUMMARY speedup={speedup:.2f} rss_ratio={rss_ratio:.2f} overlap={tied:.6f}")


if __name__ == "__main__":
    main()
