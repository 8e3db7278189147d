"""`harness compare`: per-query differences and the paired tests, against hand-computed cases."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from harness.report.compare import bootstrap_ci, bootstrap_test, compare_task, randomization_test

# Three queries, one relevant document each.
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
# Run A ranks every relevant document first; run B differs in one query's ranking: q2's relevant
# document drops from rank 1 to rank 2.
RUN_A = {
    "q1": {"d1": 3.0, "d9": 2.0, "d8": 1.0},
    "q2": {"d2": 3.0, "d9": 2.0, "d8": 1.0},
    "q3": {"d3": 3.0, "d9": 2.0, "d8": 1.0},
}
RUN_B = {**RUN_A, "q2": {"d9": 3.0, "d2": 2.0, "d8": 1.0}}
# By hand: nDCG@10 with one relevant document at rank r is 1 / log2(r + 1); ideal is rank 1.
NDCG_RANK2 = 1 / math.log2(3)  # 0.6309...


def _write_run(folder: Path, run: dict) -> Path:
    """A run folder as our run path writes it: harness/<Task>.per_query.json, values from pytrec_eval."""
    evaluator = pytrec_eval.RelevanceEvaluator(QRELS, {"ndcg_cut.10", "recall.5"})
    per_q = evaluator.evaluate(run)
    data = {
        "test": {
            "default": {
                "ndcg_at_10": {q: m["ndcg_cut_10"] for q, m in per_q.items()},
                "recall_at_5": {q: m["recall_5"] for q, m in per_q.items()},
            }
        }
    }
    (folder / "harness").mkdir(parents=True)
    path = folder / "harness" / "SciFact.per_query.json"
    path.write_text(json.dumps(data))
    return folder


def test_one_query_reranked_gives_hand_computed_differences(run_command, tmp_path: Path) -> None:
    a, b = _write_run(tmp_path / "a", RUN_A), _write_run(tmp_path / "b", RUN_B)
    rc, out = run_command("compare", a, b, "--format", "json")
    assert rc == 0
    got = json.loads(out)["SciFact/test/default"]
    assert got["n_queries"] == 3
    assert got["per_query_diff"] == {"q2": pytest.approx(NDCG_RANK2 - 1.0, abs=1e-12)}
    assert got["mean_a"] == pytest.approx(1.0)
    assert got["mean_b"] == pytest.approx((2 + NDCG_RANK2) / 3, abs=1e-12)
    assert got["mean_diff"] == pytest.approx((NDCG_RANK2 - 1.0) / 3, abs=1e-12)
    # one changed query: flipping its sign is as extreme as not flipping it
    assert got["p_value"] == 1.0 and got["exact"] is True
    assert got["ci"][0] <= got["mean_diff"] <= got["ci"][1] <= 0.0
    # recall@5 is unchanged: the relevant document is still in the top 5
    rc, out = run_command("compare", a, b, "--format", "json", "--metric", "recall_at_5")
    assert json.loads(out)["SciFact/test/default"]["per_query_diff"] == {}
    rc, md = run_command("compare", a, b)
    assert "| SciFact | test/default | 3 | 100.00 | 87.70 | -12.30 |" in md
    assert "q2 -0.3691" in md


def test_all_queries_better_exact_p() -> None:
    """Five equal gains: of 2^5 sign patterns only all-plus and all-minus are as extreme: p = 2/32."""
    p, exact = randomization_test(np.full(5, 0.1))
    assert exact and p == pytest.approx(2 / 32)


def test_randomization_test_equals_brute_force_enumeration() -> None:
    rng = np.random.default_rng(7)
    diffs = np.round(rng.normal(0.05, 0.2, 12), 4)
    diffs = np.concatenate([diffs, np.zeros(30)])  # unchanged queries do not change the test
    observed = abs(diffs.sum())
    nonzero = diffs[diffs != 0]
    count = sum(
        abs((nonzero * np.array(signs)).sum()) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=nonzero.size)
    )
    p, exact = randomization_test(diffs, n_resamples=10_000)
    assert exact and p == pytest.approx(count / 2**nonzero.size, abs=1e-12)


def test_monte_carlo_and_bootstrap_agree_on_a_clear_effect() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, 300)
    b = np.clip(a + rng.normal(0.05, 0.1, 300), 0, 1)
    res = compare_task(
        "T",
        "test",
        "default",
        "ndcg_at_10",
        {f"q{i}": x for i, x in enumerate(a)},
        {f"q{i}": x for i, x in enumerate(b)},
    )
    assert not res.exact and res.p_value < 0.001
    assert res.ci_low < res.mean_diff < res.ci_high and res.ci_low > 0
    assert bootstrap_test(b - a) < 0.001
    null = rng.normal(0, 0.1, 300)
    assert randomization_test(null)[0] > 0.01 or bootstrap_test(null) > 0.01
    low, high = bootstrap_ci(np.full(10, 0.2))
    assert low == high == pytest.approx(0.2)


def test_unpaired_queries_are_counted_and_left_out() -> None:
    res = compare_task("T", "test", "default", "ndcg_at_10", {"q1": 1.0, "q2": 0.5}, {"q2": 0.0, "q3": 1.0})
    assert (res.n_queries, res.only_a, res.only_b) == (1, 1, 1)
    assert res.per_query == {"q2": -0.5}
