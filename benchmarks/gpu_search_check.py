"""Exact search on CUDA: the harness's streaming top-k against a float64 brute force, and its speed.

    python benchmarks/gpu_search_check.py [--docs 1000000] [--queries 10000] [--dim 384] [--top-k 100]

Data: the synthetic clustered corpus of ``bench_search.py`` (unit vectors around 2,000 centres; queries are
perturbed documents), generated on the GPU. ``harness.engine.search.exact_search`` runs on CUDA with each
prefilter (``none``: fp32 products; ``bf16``: bf16 products with the error bound, then exact fp32 rescoring),
the corpus streamed in 65,536-row chunks, and on the CPU for the first ``--cpu-queries`` queries. Reference:
float64 products and ``torch.topk`` on the GPU. Checked: every returned document is in the float64 top-k up to
ties (its float64 score within 1e-6 of the k-th), returned scores within 1e-5 of float64, and the CUDA and CPU
runs agree up to ties. Needs only torch and this repository. Last line: ``SUMMARY …``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.engine.search import SearchStats, exact_search  # noqa: E402

CHUNK = 65536


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(docs: int, queries: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(1234)
    centres = torch.randn(2000, dim, device=device, generator=gen)
    pick = torch.randint(0, 2000, (docs,), device=device, generator=gen)
    corpus = centres[pick] + 1.5 * torch.randn(docs, dim, device=device, generator=gen)
    corpus = torch.nn.functional.normalize(corpus, dim=-1)
    rows = torch.randint(0, docs, (queries,), device=device, generator=gen)
    q = corpus[rows] + 0.05 * torch.randn(queries, dim, device=device, generator=gen)
    return corpus, q


def reference(corpus: torch.Tensor, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 top-k scores [Q, k] and, for checking, a function of float64 scores of any (query, doc)."""
    d64 = corpus.double()
    qn = torch.nn.functional.normalize(q.double(), dim=-1)
    kth = torch.empty(q.shape[0], dtype=torch.float64, device=q.device)
    for start in range(0, q.shape[0], 256):
        scores = qn[start : start + 256] @ d64.T
        kth[start : start + 256] = scores.topk(k, dim=1).values[:, -1]
    return qn, kth


def check(indices: np.ndarray, scores: np.ndarray, corpus: torch.Tensor, qn: torch.Tensor, kth: torch.Tensor,
          rows: slice = slice(None)) -> tuple[float, float]:
    """(share of returned documents in the float64 top-k up to ties, max |score - float64 score|)."""
    idx = torch.as_tensor(indices, device=corpus.device)
    exact = torch.einsum("qd,qkd->qk", qn[rows], corpus.double()[idx])
    ok = exact >= kth[rows, None] - 1e-6
    err = (exact - torch.as_tensor(scores, device=corpus.device, dtype=torch.float64)).abs().max()
    return float(ok.double().mean()), float(err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--cpu-queries", type=int, default=500)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only as a plumbing check of this script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_search_check.py needs CUDA")
    device = torch.device(args.device)
    corpus, q = make_data(args.docs, args.queries, args.dim, device)
    id_rank = np.arange(args.docs)
    chunks = [(corpus[s : s + CHUNK], np.arange(s, min(s + CHUNK, args.docs))) for s in range(0, args.docs, CHUNK)]
    start = time.perf_counter()
    qn, kth = reference(corpus, q, args.top_k)
    sync(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}: {args.docs:,} x {args.dim} corpus, {args.queries:,} queries, "
          f"top-{args.top_k}; float64 reference {time.perf_counter() - start:.1f} s")
    worst_share, worst_err, results = 1.0, 0.0, {}
    for prefilter in ("none", "bf16"):
        exact_search(q[:64], chunks, top_k=args.top_k, id_rank=id_rank, device=device, prefilter=prefilter)
        stats = SearchStats()
        sync(device)
        start = time.perf_counter()
        scores, indices = exact_search(q, chunks, top_k=args.top_k, id_rank=id_rank, device=device,
                                       prefilter=prefilter, stats=stats)
        wall = time.perf_counter() - start
        share, err = check(indices, scores, corpus, qn, kth)
        results[prefilter] = indices
        worst_share, worst_err = min(worst_share, share), max(worst_err, err)
        print(f"cuda prefilter={prefilter}: {wall:.2f} s ({args.queries / wall:,.0f} queries/s), in float64 top-k "
              f"up to ties {share:.6f}, max score error {err:.2e}, uncertified {stats.uncertified}")
    same = float((results["none"] == results["bf16"]).mean())
    print(f"cuda none vs bf16: identical indices {same:.6f}")
    n = args.cpu_queries
    cpu_chunks = [(c.cpu(), i) for c, i in chunks]
    start = time.perf_counter()
    scores, indices = exact_search(q[:n].cpu(), cpu_chunks, top_k=args.top_k, id_rank=id_rank, device="cpu")
    share, err = check(indices, scores, corpus, qn, kth, slice(0, n))
    agree = float((indices == results["none"][:n]).mean())
    print(f"cpu ({n} queries): {time.perf_counter() - start:.1f} s, in float64 top-k up to ties {share:.6f}, max "
          f"score error {err:.2e}; identical to cuda {agree:.6f}")
    worst_share, worst_err = min(worst_share, share), max(worst_err, err)
    verdict = "PASS" if worst_share == 1.0 and worst_err <= 1e-5 else "FAIL"
    print(f"SUMMARY {verdict} in_topk_up_to_ties={worst_share:.6f} max_score_err={worst_err:.2e} "
          f"cuda_bf16_vs_none={same:.6f} cpu_vs_cuda={agree:.6f}")


if __name__ == "__main__":
    main()
