"""Per-query scores of a run, computed the way mteb computes the means (pytrec_eval measures; MRR with
pytrec_eval's tie-break), so that ``harness compare`` can run paired tests and the means cross-check mteb."""

from __future__ import annotations

from collections.abc import Mapping

import pytrec_eval

#: our name → pytrec_eval measure
PYTREC_MEASURES = {
    "ndcg_at_10": "ndcg_cut_10",
    "recall_at_5": "recall_5",
    "recall_at_100": "recall_100",
    "map_at_100": "map_cut_100",
}


def reciprocal_rank(ranked: list[str], relevant: set[str], k: int) -> float:
    for rank, doc_id in enumerate(ranked[:k], start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def per_query_scores(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ignore_identical_ids: bool = False,
    skip_first_result: bool = False,
) -> dict[str, dict[str, float]]:
    """``{metric: {qid: value}}`` for the queries pytrec_eval scores (in both qrels and run)."""
    run = {qid: dict(docs) for qid, docs in run.items()}
    if ignore_identical_ids:
        for qid, docs in run.items():
            docs.pop(qid, None)
    if skip_first_result:
        run = {q: dict(sorted(d.items(), key=lambda x: x[1], reverse=True)[1:]) for q, d in run.items()}
    qrels = {qid: {d: int(r) for d, r in docs.items()} for qid, docs in qrels.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.5,100", "map_cut.100"})
    raw = evaluator.evaluate(run)
    out: dict[str, dict[str, float]] = {name: {} for name in [*PYTREC_MEASURES, "mrr_at_10"]}
    for qid, measures in raw.items():
        for name, measure in PYTREC_MEASURES.items():
            out[name][qid] = float(measures[measure])
        ranked = [d for d, _ in sorted(run[qid].items(), key=lambda item: (item[1], item[0]), reverse=True)]
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        out["mrr_at_10"][qid] = reciprocal_rank(ranked, relevant, 10)
    return out


def mean_scores(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {m: (sum(v.values()) / len(v) if v else float("nan")) for m, v in per_query.items()}
