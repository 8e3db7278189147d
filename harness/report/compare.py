"""Paired significance between two runs, over per-query scores.

Owns: pairing the per-query scores of run A and run B by query id, the per-query differences (B - A), a
two-sided paired randomisation test (sign flips, scipy.stats.permutation_test; exact when the number of
non-zero differences allows, Monte Carlo otherwise), an alternative paired bootstrap test, and a bootstrap
confidence interval of the mean difference (scipy.stats.bootstrap, BCa).
Must not know: file layouts (harness.results.load hands over the per-query dicts) or how runs were made.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

TESTS = ("randomization", "bootstrap")


@dataclass
class TaskComparison:
    task: str
    split: str
    subset: str
    metric: str
    n_queries: int
    only_a: int  # queries scored in A but not in B (left out of the test)
    only_b: int
    mean_a: float
    mean_b: float
    mean_diff: float  # B - A, on the metric's 0-1 scale
    p_value: float
    test: str
    exact: bool
    ci_low: float
    ci_high: float
    confidence: float
    per_query: dict[str, float] = field(default_factory=dict)  # qid -> B - A, every paired query

    @property
    def changed(self) -> dict[str, float]:
        return {q: d for q, d in self.per_query.items() if d != 0.0}


def pair_scores(a: dict[str, float], b: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Query ids scored in both runs (sorted), with A's and B's values."""
    qids = sorted(set(a) & set(b))
    return qids, np.array([a[q] for q in qids], dtype=float), np.array([b[q] for q in qids], dtype=float)


def randomization_test(diffs: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided paired randomisation (sign-flip) test of mean(diffs) = 0: (p-value, exact?).

    Zero differences are dropped first: a sign flip leaves them unchanged, so the null distribution of the
    sum (a monotone function of the mean over all queries) is the same and exact enumeration stays
    feasible for up to log2(n_resamples) changed queries.
    """
    from scipy import stats

    nonzero = diffs[diffs != 0.0]
    if nonzero.size <= 1:  # both signs of a single difference are equally extreme
        return 1.0, True
    exact = 2**nonzero.size <= n_resamples

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(x - y, axis=axis)

    # permutation_type="samples" swaps each pair's two values: the sign flip of that difference.
    res = stats.permutation_test(
        (nonzero, np.zeros_like(nonzero)),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(res.pvalue, 1.0)), exact


def bootstrap_test(diffs: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired bootstrap test of mean(diffs) = 0 (shift method: resample the centred differences)."""
    if diffs.size == 0 or np.all(diffs == 0.0):
        return 1.0
    rng = np.random.default_rng(seed)
    observed = abs(diffs.mean())
    centred = diffs - diffs.mean()
    idx = rng.integers(0, diffs.size, size=(n_resamples, diffs.size))
    means = centred[idx].mean(axis=1)
    return float((np.sum(np.abs(means) >= observed - 1e-15) + 1) / (n_resamples + 1))


def bootstrap_ci(
    diffs: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap CI of the mean difference (BCa; percentile where BCa is undefined)."""
    from scipy import stats

    if diffs.size == 0:
        return math.nan, math.nan
    if np.all(diffs == diffs[0]):
        return float(diffs[0]), float(diffs[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns on degenerate resamples; we fall back below
            res = stats.bootstrap(
                (diffs,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            return low, high
    return math.nan, math.nan


def compare_task(
    task: str,
    split: str,
    subset: str,
    metric: str,
    a: dict[str, float],
    b: dict[str, float],
    test: str = "randomization",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> TaskComparison:
    """Compare one task's per-query scores of two runs."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; use one of {TESTS}")
    qids, va, vb = pair_scores(a, b)
    diffs = vb - va
    if test == "randomization":
        p, exact = randomization_test(diffs, n_resamples, seed)
    else:
        p, exact = bootstrap_test(diffs, n_resamples, seed), False
    low, high = bootstrap_ci(diffs, confidence, n_resamples, seed)
    return TaskComparison(
        task=task,
        split=split,
        subset=subset,
        metric=metric,
        n_queries=len(qids),
        only_a=len(set(a) - set(b)),
        only_b=len(set(b) - set(a)),
        mean_a=float(va.mean()) if qids else math.nan,
        mean_b=float(vb.mean()) if qids else math.nan,
        mean_diff=float(diffs.mean()) if qids else math.nan,
        p_value=p,
        test=test,
        exact=exact,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        per_query={q: float(d) for q, d in zip(qids, diffs, strict=True)},
    )
