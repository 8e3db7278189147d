"""The regression gate: expected scores (pyserini-style YAML) against result files.

Owns: the expected-file schema (`results/expected/*.yaml`), the OK / OKish / FAIL / MISSING verdict per row,
running the reproduction commands when asked, and the JUnit XML that CI systems read.
Must not know: how a run is made (it calls `harness run` in a subprocess) or file formats
(harness.results.load).

Expected file:
    model: sentence-transformers/all-MiniLM-L6-v2   # the name in model_meta.json (results/<org__model>/)
    model_config: all-minilm-l6-v2                  # conf/model/<model_config>.yaml
    hardware: cpu                                   # informational: cpu | gpu
    tolerance: 0.002                                # default allowed |actual - expected| (0-1 scale)
    source: where the expected values come from
    runs:
      - task: SciFact
        split: test
        subset: default                             # optional
        subtasks: [...]                             # optional: an aggregate task, the mean of these
        command: harness run model=all-minilm-l6-v2 task=scifact
        metrics:
          - {metric: ndcg_at_10, expected: 0.64508, tolerance: 0.002, source: "..."}

Verdicts: OK when the result equals the expected value to the decimals it is written with (|Δ| at most half
a unit in its last place), OKish when it differs by more but stays within the tolerance, FAIL beyond the
tolerance, MISSING when no result file has the value. Only FAIL and MISSING fail the gate.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.report.aggregate import BenchmarkTask, find_score, group_by_model
from harness.results.load import ResultFolder, find_all

DEFAULT_TOLERANCE = 0.002
FAILING = ("FAIL", "MISSING")


class ExpectedFileError(ConfigError):
    """An expected-scores file that does not follow the schema; the message names the file and key."""


@dataclass(frozen=True)
class Expectation:
    model: str
    task: str
    split: str
    subset: str
    metric: str
    expected: float
    tolerance: float
    source: str
    command: str
    subtasks: tuple[str, ...] = ()
    file: str = ""

    @property
    def name(self) -> str:
        where = self.split if self.subset == "default" else f"{self.split}/{self.subset}"
        return f"{self.task} [{where}] {self.metric}"


@dataclass
class Verdict:
    expectation: Expectation
    status: str  # OK | OKish | FAIL | MISSING
    actual: float | None
    source: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def delta(self) -> float | None:
        return None if self.actual is None else self.actual - self.expectation.expected


def _require(mapping: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise ExpectedFileError(f"{path}: key '{where}{key}' missing")
    return mapping[key]


def load_expected(path: Path | str) -> list[Expectation]:
    """The rows of one expected-scores file."""
    path = Path(path)
    if not path.is_file():
        raise ExpectedFileError(f"{path}: no such expected-scores file")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ExpectedFileError(f"{path}: expected a mapping with keys model, runs")
    model = str(_require(data, "model", path, ""))
    default_tol = float(data.get("tolerance", DEFAULT_TOLERANCE))
    default_source = str(data.get("source", ""))
    runs = _require(data, "runs", path, "")
    if not isinstance(runs, list) or not runs:
        raise ExpectedFileError(f"{path}: key 'runs' must be a non-empty list")
    rows: list[Expectation] = []
    for i, run in enumerate(runs):
        where = f"runs[{i}]."
        task = str(_require(run, "task", path, where))
        metrics = _require(run, "metrics", path, where)
        if not isinstance(metrics, list) or not metrics:
            raise ExpectedFileError(f"{path}: key '{where}metrics' must be a non-empty list")
        for j, m in enumerate(metrics):
            mwhere = f"{where}metrics[{j}]."
            expected = float(_require(m, "expected", path, mwhere))
            if not 0.0 <= expected <= 1.0:
                raise ExpectedFileError(f"{path}: key '{mwhere}expected' = {expected}: use the 0-1 scale")
            rows.append(
                Expectation(
                    model=model,
                    task=task,
                    split=str(run.get("split", "test")),
                    subset=str(run.get("subset") or "default"),
                    metric=str(_require(m, "metric", path, mwhere)),
                    expected=expected,
                    tolerance=float(m.get("tolerance", run.get("tolerance", default_tol))),
                    source=str(m.get("source", run.get("source", default_source))),
                    command=str(run.get("command", "")),
                    subtasks=tuple(run.get("subtasks") or ()),
                    file=str(path),
                )
            )
    return rows


def exact_half_unit(value: float) -> float:
    """Half a unit in the last decimal place the value is written with (0.64508 -> 0.000005)."""
    exponent = Decimal(repr(value)).as_tuple().exponent
    return 0.5 * 10.0 ** int(exponent) if isinstance(exponent, int) else 0.0


def judge(expectation: Expectation, actual: float | None) -> str:
    if actual is None or math.isnan(actual):
        return "MISSING"
    delta = abs(actual - expectation.expected)
    if delta <= exact_half_unit(expectation.expected) + 1e-12:
        return "OK"
    if delta <= expectation.tolerance + 1e-12:
        return "OKish"
    return "FAIL"


def check(expectations: list[Expectation], folders: list[ResultFolder]) -> list[Verdict]:
    """One verdict per expected row, reading scores from `folders` (first folder with the value wins)."""
    by_model = group_by_model(folders)
    verdicts = []
    for exp in expectations:
        notes: list[str] = []
        task = BenchmarkTask(
            name=exp.task,
            split=exp.split,
            subset=exp.subset,
            category="",
            metric=exp.metric,
            subtasks=exp.subtasks,
        )
        found = find_score(by_model.get(exp.model, []), task, exp.metric, notes)
        if exp.model not in by_model:
            notes.append(f"no results for model {exp.model}")
        actual, source = (found[0], found[1]) if found else (None, None)
        verdicts.append(Verdict(exp, judge(exp, actual), actual, source, notes))
    return verdicts


def harness_command(command: str, results_dir: Path | None = None) -> list[str]:
    """`harness run ...` as an argv running this interpreter's harness (`python -m harness run ...`)."""
    argv = shlex.split(command)
    if not argv or argv[0] != "harness":
        raise ExpectedFileError(f"command {command!r} must start with 'harness'")
    out = [sys.executable, "-m", "harness", *argv[1:]]
    if results_dir is not None and not any(a.startswith("output_dir=") for a in argv):
        out.append(f"output_dir={results_dir}")
    return out


def run_commands(
    expectations: list[Expectation], results_dir: Path, only_missing: list[Verdict]
) -> list[str]:
    """Run each distinct reproduction command of the rows in `only_missing`; returns the failures."""
    failures = []
    commands = dict.fromkeys(v.expectation.command for v in only_missing if v.expectation.command)
    for command in commands:
        argv = harness_command(command, results_dir)
        print(f"$ {shlex.join(argv)}", flush=True)
        if subprocess.run(argv, check=False).returncode != 0:
            failures.append(command)
    return failures


def render_verdicts(verdicts: list[Verdict]) -> str:
    header = ["model", "task", "metric", "expected", "actual", "Δ", "tol", "status"]
    rows = []
    for v in verdicts:
        e = v.expectation
        rows.append(
            [
                e.model,
                e.task if e.subset == "default" else f"{e.task} ({e.subset})",
                f"{e.metric}@{e.split}",
                f"{e.expected:.5f}",
                "-" if v.actual is None else f"{v.actual:.5f}",
                "-" if v.delta is None else f"{v.delta:+.5f}",
                f"{e.tolerance:g}",
                v.status,
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {s: sum(v.status == s for v in verdicts) for s in ("OK", "OKish", "FAIL", "MISSING")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def write_junit(verdicts: list[Verdict], path: Path | str, suite: str = "harness-regress") -> Path:
    """JUnit XML: one testcase per expected row; FAIL and MISSING are failures, OKish passes with output."""
    path = Path(path)
    failures = sum(v.status in FAILING for v in verdicts)
    root = ET.Element("testsuites", name=suite, tests=str(len(verdicts)), failures=str(failures))
    suites: dict[str, ET.Element] = {}
    for v in verdicts:
        e = v.expectation
        if e.model not in suites:
            suites[e.model] = ET.SubElement(root, "testsuite", name=e.model)
        case = ET.SubElement(suites[e.model], "testcase", classname=e.model, name=e.name)
        actual = "none" if v.actual is None else f"{v.actual:.6f}"
        detail = (
            f"expected {e.expected} ± {e.tolerance} ({e.source}); "
            f"actual {actual} ({v.source or 'no result'}); reproduce: {e.command}"
        )
        if v.status in FAILING:
            msg = f"{v.status}: {e.name} expected {e.expected} actual {actual}"
            ET.SubElement(case, "failure", message=msg, type=v.status).text = "\n".join([detail, *v.notes])
        ET.SubElement(case, "system-out").text = f"{v.status}: {detail}"
    for model, element in suites.items():
        rows = [v for v in verdicts if v.expectation.model == model]
        element.set("tests", str(len(rows)))
        element.set("failures", str(sum(v.status in FAILING for v in rows)))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def results_folders(results_dir: Path) -> list[ResultFolder]:
    return find_all([results_dir]) if results_dir.exists() else []
