"""Metric values on hand-computed cases (ties included), and agreement of our per-query scores with pytrec_eval,
mteb's own evaluator and BEIR's."""

from __future__ import annotations

import math

import pytest

from harness.results.per_query import mean_scores, per_query_scores

QRELS = {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 1}, "q3": {"d9": 1, "d8": 0}}
RUN = {
    # d4 and d1 tie at 0.9: pytrec_eval orders ties by doc id descending, so d4 ranks first
    "q1": {"d1": 0.9, "d2": 0.5, "d4": 0.9},
    # d5 and d3 tie: d5 first, the relevant d3 second
    "q2": {"d5": 0.3, "d3": 0.3},
    # d8 is judged non-relevant (0): it must not count for recall or MRR
    "q3": {"d8": 0.8, "d7": 0.7, "d9": 0.1},
}

LOG2_3 = math.log2(3)
EXPECTED = {
    "q1": {
        # ranks: d4 (0), d1 (1), d2 (2); linear gains, log2(rank+1) discount
        "ndcg_at_10": (1 / LOG2_3 + 2 / 2) / (2 / 1 + 1 / LOG2_3),
        "recall_at_5": 1.0,
        "mrr_at_10": 0.5,
    },
    "q2": {"ndcg_at_10": 1 / LOG2_3, "recall_at_5": 1.0, "mrr_at_10": 0.5},
    "q3": {"ndcg_at_10": (1 / 2) / 1, "recall_at_5": 1.0, "mrr_at_10": 1 / 3},
}


def test_hand_computed_values_with_ties() -> None:
    scores = per_query_scores(QRELS, RUN)
    for qid, expected in EXPECTED.items():
        for metric, value in expected.items():
            assert scores[metric][qid] == pytest.approx(value, abs=1e-12), (qid, metric)


def test_identical_ids_are_dropped_only_when_asked() -> None:
    qrels = {"a": {"b": 1}}
    run = {"a": {"a": 0.99, "b": 0.5}}
    assert per_query_scores(qrels, run)["mrr_at_10"]["a"] == 0.5
    assert per_query_scores(qrels, run, ignore_identical_ids=True)["mrr_at_10"]["a"] == 1.0


def test_means_equal_mteb_evaluator() -> None:
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    ours = mean_scores(per_query_scores(QRELS, RUN))
    theirs = calculate_retrieval_scores(RUN, QRELS, [1, 3, 5, 10, 100])
    assert ours["ndcg_at_10"] == pytest.approx(theirs.ndcg["NDCG@10"], abs=1e-5)
    assert ours["recall_at_5"] == pytest.approx(theirs.recall["Recall@5"], abs=1e-5)
    assert ours["map_at_100"] == pytest.approx(theirs.map["MAP@100"], abs=1e-5)
    mrr = theirs.mrr
    assert ours["mrr_at_10"] == pytest.approx(mrr["MRR@10"], abs=1e-5)


def test_means_equal_beir_evaluator() -> None:
    from beir.retrieval.evaluation import EvaluateRetrieval

    ours = mean_scores(per_query_scores(QRELS, RUN))
    ndcg, _map, recall, _p = EvaluateRetrieval.evaluate(QRELS, RUN, [5, 10, 100], ignore_identical_ids=False)
    assert ours["ndcg_at_10"] == pytest.approx(ndcg["NDCG@10"], abs=1e-5)
    assert ours["recall_at_5"] == pytest.approx(recall["Recall@5"], abs=1e-5)
