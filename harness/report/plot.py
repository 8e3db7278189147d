"""A picture of a benchmark table: per-task bars, models side by side.

Owns: the figure. Must not know how scores are computed. matplotlib is imported inside the function
(Agg backend, no display needed) so that importing the report package stays fast.
"""

from __future__ import annotations

from pathlib import Path

from harness.report.aggregate import Benchmark, ModelScores


def plot_task_bars(
    scores: dict[str, ModelScores], bench: Benchmark, out: Path | str, title: str = ""
) -> Path:
    """Grouped bars: one group per task (benchmark order), one bar per model; missing tasks left empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out)
    labels = [t.label for t in bench.tasks]
    models = list(scores)
    n_tasks, n_models = len(labels), max(len(models), 1)
    width = 0.8 / n_models
    x = np.arange(n_tasks)
    fig_width = min(22.0, max(8.0, 0.2 * n_tasks * (1 + 0.25 * (n_models - 1)) + 3))
    fig, ax = plt.subplots(figsize=(fig_width, 6.0))
    for i, model in enumerate(models):
        ms = scores[model]
        heights = [ms.tasks.get(lab) for lab in labels]
        vals = np.array([np.nan if h is None else h for h in heights], dtype=float)
        avg = "n/a" if ms.average is None else f"{ms.average:.2f}"
        ax.bar(x + (i - (n_models - 1) / 2) * width, vals, width, label=f"{model} (avg {avg})")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, n_tasks - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{bench.name}: per-task scores")
    # Outside the axes: bars reach the top for strong models.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
