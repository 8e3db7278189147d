"""Table formats and the per-task bar plot of `harness report`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from harness.report.aggregate import aggregate, load_benchmark, load_published
from harness.report.tables import render_table, scores_frame
from harness.results.load import find_all

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_markdown_with_published_and_missing(run_command, mteb_results: Path) -> None:
    rc, out = run_command(
        "report",
        mteb_results / "nvidia__NV-Retriever-v1",
        mteb_results / "nvidia__NV-Embed-v1" / "external",
        "--benchmark",
        "beir-15",
        "--published",
    )
    assert rc == 0
    header = out.splitlines()[0]
    assert "nvidia/NV-Retriever-v1 published" in header and "nvidia/NV-Retriever-v1 Δ" in header
    avg_row = next(line for line in out.splitlines() if "Average (15)" in line)
    assert "| 60.90 | 60.90 | 0.00 |" in avg_row
    msmarco = next(line for line in out.splitlines() if "| MSMARCO |" in line)
    assert "46.49" in msmarco and "44.89" in msmarco
    assert "split 'test' taken for 'dev'" in out  # NV-Embed-v1's card label, in the footnotes


def test_csv_and_latex(mteb_results: Path) -> None:
    bench = load_benchmark("beir-15")
    folders = find_all([mteb_results / "nvidia__NV-Embed-v2" / "external"])
    scores = aggregate(folders, bench, "legacy")
    frame = scores_frame(scores, bench, load_published(bench))
    rows = list(csv.DictReader(io.StringIO(render_table(frame, "csv"))))
    by_task = {r["task"]: r for r in rows}
    assert by_task["NFCorpus"]["nvidia/NV-Embed-v2"] == "45.17"
    assert by_task["Average (15)"]["nvidia/NV-Embed-v2"] == "62.65"
    assert by_task["Average (15)"]["nvidia/NV-Embed-v2 Δ"] == "0.00"
    latex = render_table(frame, "latex")
    assert "\\begin{tabular}" in latex and "62.65" in latex


def test_missing_tasks_show_and_block_average(run_command, mteb_results: Path) -> None:
    rc, out = run_command("report", mteb_results / "nvidia__NV-Embed-v1" / "external" / "ArguAna.json")
    assert rc == 0
    avg_row = next(line for line in out.splitlines() if "Average (15)" in line)
    assert avg_row.rstrip().endswith("| – |")
    assert "missing 14 task(s)" in out


def test_plot_writes_png(run_command, mteb_results: Path, tmp_path: Path) -> None:
    png = tmp_path / "bars.png"
    rc, _ = run_command(
        "report",
        mteb_results / "nvidia__NV-Retriever-v1",
        mteb_results / "nvidia__NV-Embed-v2" / "external",
        "--benchmark",
        "beir-15",
        "--plot",
        png,
    )
    assert rc == 0
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
