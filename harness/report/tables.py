"""Rendering benchmark scores as tables: markdown, csv, latex and json.

Owns: the layout of a benchmark table (tasks, then category averages, then the overall average; models side
by side; with published values and differences when asked) and its serialisations.
Must not know: how scores are computed or where they came from (harness.report.aggregate).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from harness.report.aggregate import Benchmark, ModelScores

FORMATS = ("md", "csv", "latex", "json")
MISSING = "–"


def _avg_label(category: str, n: int) -> str:
    return f"{category} average ({n})"


def scores_frame(
    scores: dict[str, ModelScores], bench: Benchmark, published: dict[str, ModelScores] | None = None
) -> pd.DataFrame:
    """One row per task, then per category average and the overall average; one column per model.

    With `published`, each model that has published values gets `<model> published` and `<model> Δ`.
    """
    rows: list[tuple[str, str]] = [(t.category, t.label) for t in bench.tasks]
    cats = bench.categories
    counts = {c: sum(t.category == c for t in bench.tasks) for c in cats}
    rows += [(c, _avg_label(c, counts[c])) for c in cats]
    rows.append(("", f"Average ({len(bench.tasks)})"))
    index = pd.MultiIndex.from_tuples(rows, names=["category", "task"])

    def column(ms: ModelScores) -> list[float | None]:
        per_task = [ms.tasks.get(t.label) for t in bench.tasks]
        return per_task + [ms.categories.get(c) for c in cats] + [ms.average]

    data: dict[str, list[float | None]] = {}
    for model, ms in scores.items():
        data[model] = column(ms)
        if published and model in published:
            pub = column(published[model])
            data[f"{model} published"] = pub
            data[f"{model} Δ"] = [
                None if a is None or b is None else a - b for a, b in zip(data[model], pub, strict=True)
            ]
    return pd.DataFrame(data, index=index, dtype="float64")


def _fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{x:.{digits}f}"


def render_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs tabulate, which we do not ship)."""
    header = ["category", "task", *frame.columns]
    align = ["---", "---"] + ["---:"] * len(frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for (cat, task), row in frame.iterrows():
        cells = [str(cat), str(task)] + [_fmt(v, digits) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_table(frame: pd.DataFrame, fmt: str, digits: int = 2) -> str:
    if fmt == "md":
        return render_markdown(frame, digits)
    if fmt == "csv":
        return frame.to_csv(float_format=f"%.{digits}f", na_rep="")
    if fmt == "latex":
        return frame.to_latex(float_format=f"%.{digits}f", na_rep=MISSING, escape=True)
    raise ValueError(f"unknown table format {fmt!r}; use one of {FORMATS}")


def render_json(
    scores: dict[str, ModelScores],
    published: dict[str, ModelScores] | None = None,
    digits: int | None = 2,
) -> str:
    """`{"<org/model>": {"average", "categories", "tasks", "missing", "notes"[, "published"]}}`, percent."""
    out: dict[str, Any] = {}
    for model, ms in scores.items():
        out[model] = ms.to_json(digits)
        if published and model in published:
            pub = published[model].to_json(digits)
            out[model]["published"] = {k: pub[k] for k in ("average", "categories", "tasks")}
    return json.dumps(out, indent=2, ensure_ascii=False)


def render_footnotes(scores: dict[str, ModelScores]) -> str:
    """Missing tasks and notes per model, for the human-readable formats."""
    lines: list[str] = []
    for model, ms in scores.items():
        if ms.missing:
            lines.append(
                f"- {model}: missing {len(ms.missing)} task(s), so no average where they count: "
                + ", ".join(ms.missing)
            )
        for note in ms.notes:
            lines.append(f"- {model}: {note}")
    return "\n".join(lines)
