"""The table printed at the end of ``harness run``: per task, split and subset, nDCG@10, Recall@5, Recall@100,
MRR@10, the published value of the main score where one is known, and the difference (all in percent)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from harness.config import PROJECT_ROOT

PUBLISHED_DIR = PROJECT_ROOT / "results" / "published"
COLUMNS = (("nDCG@10", "ndcg_at_10"), ("R@5", "recall_at_5"), ("R@100", "recall_at_100"), ("MRR@10", "mrr_at_10"))


@lru_cache(maxsize=1)
def published_values() -> dict[str, dict[str, float]]:
    """``{model: {task label: published percent}}`` from every JSON file in ``results/published/``."""
    table: dict[str, dict[str, float]] = {}
    for path in sorted(PUBLISHED_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for model, entry in data.items():
            if model.startswith("_") or not isinstance(entry, Mapping):
                continue
            for label, task in (entry.get("tasks") or {}).items():
                if isinstance(task, Mapping) and task.get("published") is not None:
                    table.setdefault(model, {})[label] = float(task["published"])
    return table


def published_for(model: str, task: str, subset: str) -> float | None:
    known = published_values().get(model, {})
    for label in (f"{task} ({subset})", task) if subset != "default" else (task,):
        if label in known:
            return known[label]
    return None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if isinstance(value, float) and value <= 1.0 else f"{value:.2f}"


def beyond_depth(key: str, depth: int | None) -> bool:
    """Whether a pipeline's second stage (reranking the top ``depth``) cannot alone decide ``key`` (``recall_at_100``):
    a cutoff deeper than ``depth``, or a set metric (recall, precision, hit rate) at a cutoff >= ``depth``, whose
    documents are exactly the first stage's."""
    if depth is None or "_at_" not in key:
        return False
    k = int(key.rsplit("_at_", 1)[1])
    return k >= depth if key.startswith(("recall_", "precision_", "hit_rate_")) else k > depth


def run_table_rows(model: str, outcomes: Iterable[Any], rerank_depth: int | None = None) -> list[list[str]]:
    rows = []
    for outcome in outcomes:
        for split, entries in outcome.scores.items():
            for entry in entries:
                subset = entry.get("hf_subset", "default")
                main = entry.get("main_score")
                published = published_for(model, outcome.task_name, subset)
                diff = f"{100 * main - published:+.2f}" if published is not None and main is not None else "-"
                label = outcome.task_name + ("" if subset == "default" else f" ({subset})")
                rows.append(
                    [label, split,
                     *[_fmt(entry.get(key)) + ("†" if beyond_depth(key, rerank_depth) else "") for _, key in COLUMNS],
                     f"{published:.2f}" if published is not None else "-", diff,
                     "cached" if outcome.skipped else "new"]
                )
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def print_run_table(model: str, outcomes: Iterable[Any], rerank_depth: int | None = None) -> None:
    header = ["task", "split", *[name for name, _ in COLUMNS], "published", "diff", "result"]
    print(f"\n{model} (scores in %, published = main score on the MTEB leaderboard)")
    print(format_table(header, run_table_rows(model, outcomes, rerank_depth)))
    if rerank_depth is not None and any(beyond_depth(key, rerank_depth) for _, key in COLUMNS):
        print(f"† at or beyond the rerank depth ({rerank_depth}): recall at k >= depth is the first stage's, and ranks "
              "below the depth keep the first stage's order")
