"""Benchmarks as data and the averaging rules.

Owns: reading `conf/benchmark/<name>.yaml` (task list with split, subset, metric, category, subtasks) and
turning result folders (from harness.results.load) into per-task, per-category and overall scores under
one of two rules:

- `legacy`: the legacy MTEB leaderboard, which produced every published MTEB(eng, v1) number
  (../shared/reference/mteb-leaderboard-rules.md): per task the first listed metric of the category's kind,
  `round(score*100, 2)` (results-repo files through float32 first, as its loader stored them), split labels
  not checked; category and overall = numpy-rounded mean of the rounded task values.
- `mteb2`: mteb 2's own scoring: `TaskResult.validate_and_filter_scores(task).get_score()` per task (strict
  splits and subsets, main_score) and mteb's Mean(Task); unrounded.

Both rules: a CQADupstack-style aggregate is recomputed from its subtasks when all are beside it, rejected
when only some are (a partial mean), and used as is when none are (a model card's own value); a model
with any task missing gets no average, and a category with any task missing gets none either.

Must not know: file formats (harness.results.load) or how tables are drawn (harness.report.tables).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.config import PROJECT_ROOT
from harness.errors import ConfigError
from harness.results.load import EXTERNAL, ResultFolder, TaskFile, load_task_result, read_json

BENCHMARK_DIR = PROJECT_ROOT / "conf" / "benchmark"
PUBLISHED_DIR = PROJECT_ROOT / "results" / "published"
RULES = ("legacy", "mteb2")


class BenchmarkError(ConfigError):
    """A benchmark file that does not say what it must; the message names the file and key."""


@dataclass(frozen=True)
class BenchmarkTask:
    name: str
    split: str
    subset: str
    category: str
    metric: str | None = None  # overrides the benchmark's metric for this task
    subtasks: tuple[str, ...] = ()
    local_folder: str | None = None  # not an mteb task: scores are read without mteb's validation
    label_override: str | None = None

    @property
    def label(self) -> str:
        """The column name the leaderboard uses: `Name (subset)` for a non-default subset."""
        if self.label_override:
            return self.label_override
        return self.name if self.subset == "default" else f"{self.name} ({self.subset})"


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    metric: str
    tasks: tuple[BenchmarkTask, ...]
    path: Path
    legacy_metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mteb_benchmark: str | None = None
    published: str | None = None

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(t.category for t in self.tasks))

    def task(self, label: str) -> BenchmarkTask:
        for t in self.tasks:
            if t.label == label:
                return t
        raise KeyError(f"{self.path}: no task labelled {label!r}")


def list_benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    """A benchmark by name (`conf/benchmark/<name>.yaml`) or by path to such a file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BENCHMARK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such benchmark; known: {', '.join(list_benchmarks())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise BenchmarkError(f"{path}: expected a mapping with keys name, metric, tasks")
    for key in ("name", "metric", "tasks"):
        if key not in data:
            raise BenchmarkError(f"{path}: key '{key}' missing")
    tasks = []
    for i, raw in enumerate(data["tasks"]):
        if not isinstance(raw, dict):
            raise BenchmarkError(f"{path}: tasks[{i}] must be a mapping")
        for key in ("name", "split", "category"):
            if not raw.get(key):
                raise BenchmarkError(f"{path}: tasks[{i}].{key} missing")
        tasks.append(
            BenchmarkTask(
                name=str(raw["name"]),
                split=str(raw["split"]),
                subset=str(raw.get("subset") or "default"),
                category=str(raw["category"]),
                metric=raw.get("metric"),
                subtasks=tuple(raw.get("subtasks") or ()),
                local_folder=raw.get("local_folder"),
                label_override=raw.get("label"),
            )
        )
    labels = [t.label for t in tasks]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise BenchmarkError(f"{path}: tasks listed twice: {dup}")
    legacy = (data.get("legacy") or {}).get("metrics") or {}
    return Benchmark(
        name=str(data["name"]),
        description=str(data.get("description") or ""),
        metric=str(data["metric"]),
        tasks=tuple(tasks),
        path=path,
        legacy_metrics={str(k): tuple(v) for k, v in legacy.items()},
        mteb_benchmark=data.get("mteb_benchmark"),
        published=data.get("published"),
    )


@dataclass
class ModelScores:
    """One model's row of a benchmark table; scores in percent."""

    model: str
    tasks: dict[str, float | None]
    categories: dict[str, float | None]
    average: float | None
    missing: list[str]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def to_json(self, digits: int | None = 2) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return x if x is None or digits is None else round(x, digits)

        return {
            "average": r(self.average),
            "categories": {k: r(v) for k, v in self.categories.items()},
            "tasks": {k: r(v) for k, v in self.tasks.items()},
            "missing": list(self.missing),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------- picking one raw score from one folder


def _pick_metric(entry: dict[str, float], task: BenchmarkTask, bench: Benchmark, rule: str) -> str | None:
    if task.metric:
        return task.metric if task.metric in entry else None
    if rule == "legacy" and task.category in bench.legacy_metrics:
        wanted = bench.legacy_metrics[task.category]
        # File order decides, not the list's order: the leaderboard took the first listed metric.
        return next((k for k in entry if k in wanted), None)
    return bench.metric if bench.metric in entry else None


MetricPicker = Callable[[dict[str, float]], "str | None"]


def _entry(tf: TaskFile, task: BenchmarkTask, notes: list[str], relax_split: bool) -> dict[str, float] | None:
    entry = tf.entry(task.split, task.subset)
    if entry is not None:
        return entry
    splits = tf.splits_with(task.subset)
    if relax_split and len(splits) == 1:
        # The legacy leaderboard matched by task name and never checked the split (NV-Embed-v1's card
        # files its MSMARCO dev score under 'test'): accept a single-split file, and say so.
        notes.append(f"{task.label}: split '{splits[0]}' taken for '{task.split}' ({tf.path})")
        return tf.entry(splits[0], task.subset)
    notes.append(f"{task.label}: no {task.split}/{task.subset} scores in {tf.path}")
    return None


def raw_score(
    folder: ResultFolder, task: BenchmarkTask, pick: MetricPicker, notes: list[str], relax_split: bool = False
) -> tuple[float, str] | None:
    """(score on the file's 0-1 scale, source) of one task in one folder, read without mteb, or None.

    `pick` chooses the metric key of a score entry. An aggregate task (with `subtasks`) is the mean over
    its subtasks when all are in the folder; with only some there, any stored aggregate is a partial mean
    and is refused (noted); with none there, the stored aggregate file is used as is.
    """
    if task.subtasks and (folder.has(task.name) or any(folder.has(s) for s in task.subtasks)):
        present = [s for s in task.subtasks if folder.has_on_disk(s)]
        if len(present) == len(task.subtasks):
            values = []
            for sub in task.subtasks:
                tf = folder.load(sub)
                entry = _entry(tf, task, notes, relax_split)
                metric = pick(entry) if entry else None
                if metric is None:
                    notes.append(f"{task.label}: subtask {sub} has no usable score ({tf.path})")
                    return None
                values.append(entry[metric])  # type: ignore[index]
            return float(np.mean(values)), f"{folder.path} (mean of {len(values)} subtasks)"
        if present:
            _note_partial(folder, task, present, notes)
            return None
    if not folder.has(task.name):
        return None
    tf = folder.load(task.name)
    entry = _entry(tf, task, notes, relax_split)
    if entry is None:
        return None
    metric = pick(entry)
    if metric is None:
        notes.append(f"{task.label}: no metric of kind {task.metric or task.category} in {tf.path}")
        return None
    return entry[metric], str(tf.path)


def find_score(
    folders: list[ResultFolder], task: BenchmarkTask, metric: str, notes: list[str]
) -> tuple[float, str, str] | None:
    """(score 0-1, source, folder kind) of `metric` from the first folder that has it; strict split."""
    for folder in folders:
        found = raw_score(folder, task, lambda e: metric if metric in e else None, notes)
        if found is not None:
            return found[0], found[1], folder.kind
    return None


def _note_partial(folder: ResultFolder, task: BenchmarkTask, present: list[str], notes: list[str]) -> None:
    what = "aggregate file rejected" if folder.has_on_disk(task.name) else "not computed"
    notes.append(
        f"{task.label}: {what} in {folder.path}: only {len(present)} of {len(task.subtasks)} subtasks "
        f"there, so any stored aggregate is a partial mean"
    )


def legacy_round(score: float, kind: str) -> float:
    """One task's legacy leaderboard value in percent, 2 decimals.

    Model cards (`external`) were read as the card's percent value; results-repo files went through a
    float32 column (`datasets.Value("float")`) first, which moves half-way cases (bge TRECCOVID 75.525).
    """
    if kind == EXTERNAL:
        return round(score * 100, 2)
    return round(float(np.float32(score * 100)), 2)


def legacy_mean(values: list[float]) -> float:
    """Mean of 2-decimal values rounded as pandas' DataFrame.round(2) does (numpy, half-even on binary)."""
    return float(np.round(np.mean(values), 2))


# ---------------------------------------------------------------- mteb 2's scoring


def _mteb_tasks(bench: Benchmark) -> dict[str, Any]:
    """mteb task objects restricted to each entry's split and subset (by label)."""
    from harness.mteb_import import import_mteb

    mteb = import_mteb()

    out: dict[str, Any] = {}
    if bench.mteb_benchmark:
        by_name = {t.metadata.name: t for t in mteb.get_benchmark(bench.mteb_benchmark).tasks}
    else:
        by_name = {}
    for t in bench.tasks:
        if t.local_folder:
            continue
        if t.name in by_name:
            out[t.label] = by_name[t.name]
            continue
        try:
            subsets = None if t.subtasks or t.subset == "default" else [t.subset]
            out[t.label] = mteb.get_task(t.name, eval_splits=[t.split], hf_subsets=subsets)
        except Exception as err:  # unknown task names: say which benchmark entry
            raise BenchmarkError(f"{bench.path}: task {t.name!r} is not an mteb task ({err})") from err
    return out


def _mteb2_raw(
    folder: ResultFolder, task: BenchmarkTask, mteb_task: Any, bench: Benchmark, notes: list[str]
) -> tuple[Any, float, str] | None:
    """(filtered TaskResult or None, score 0-1, source) under mteb 2's rules, or None."""
    metric = task.metric or bench.metric

    def score_of(tr: Any) -> float:
        if metric == "main_score":
            return float(tr.get_score())
        return float(tr.get_score(getter=lambda s: s.get(metric, math.nan)))

    if task.local_folder:  # no mteb task to validate against: strict split and subset, our reader
        if not folder.has(task.name):
            return None
        tf = folder.load(task.name)
        entry = tf.entry(task.split, task.subset)
        key = "main_score" if metric == "main_score" else metric
        if entry is None or key not in entry:
            notes.append(f"{task.label}: no {task.split}/{task.subset} {key} in {tf.path}")
            return None
        return None, entry[key], str(tf.path)
    if task.subtasks and (folder.has(task.name) or any(folder.has(s) for s in task.subtasks)):
        present = [s for s in task.subtasks if folder.has_on_disk(s)]
        if len(present) == len(task.subtasks):
            subs = {t.metadata.name: t for t in mteb_task.tasks}
            results = [
                load_task_result(folder.on_disk[s]).validate_and_filter_scores(subs[s]) for s in task.subtasks
            ]
            if metric in ("main_score", mteb_task.metadata.main_score):
                combined = mteb_task.combine_task_results(results).validate_and_filter_scores(mteb_task)
                value = score_of(combined)
            else:
                combined = None
                value = float(np.mean([score_of(r) for r in results]))
            if math.isnan(value):
                notes.append(f"{task.label}: a subtask lacks {task.split} scores in {folder.path}")
                return None
            return combined, value, f"{folder.path} (mean of {len(results)} subtasks)"
        if present:
            _note_partial(folder, task, present, notes)
            return None
    if not folder.has(task.name):
        return None
    tr = load_task_result(folder.files[task.name]).validate_and_filter_scores(mteb_task)
    value = score_of(tr)
    if math.isnan(value):
        notes.append(f"{task.label}: no {task.split}/{task.subset} {metric} in {folder.files[task.name]}")
        return None
    return tr, value, str(folder.files[task.name])


def _mteb_mean_task(task_results: list[Any]) -> float | None:
    """mteb's own Mean(Task) over filtered TaskResults."""
    from harness.mteb_import import import_mteb

    import_mteb()
    from mteb.benchmarks.benchmark import BenchmarkAggregation

    value = BenchmarkAggregation.MEAN_TASK.aggregate(task_results)["Mean(Task)"]
    return None if value is None else float(value)


# ---------------------------------------------------------------- the table


def group_by_model(folders: list[ResultFolder]) -> dict[str, list[ResultFolder]]:
    """Folders per model name, in first-seen order, each model's folders in precedence order."""
    out: dict[str, list[ResultFolder]] = {}
    for f in folders:
        out.setdefault(f.model, []).append(f)
    return out


def aggregate(folders: list[ResultFolder], bench: Benchmark, rule: str = "legacy") -> dict[str, ModelScores]:
    """Per model: the benchmark's task, category and overall scores (percent) under `rule`.

    For each task the first folder (in the given precedence order) that yields a score wins.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {RULES}")
    with warnings.catch_warnings():
        # mteb warns about every missing split or subset; the notes below say the same, per model.
        warnings.simplefilter("ignore")
        return _aggregate(folders, bench, rule)


def _aggregate(folders: list[ResultFolder], bench: Benchmark, rule: str) -> dict[str, ModelScores]:
    mteb_tasks = _mteb_tasks(bench) if rule == "mteb2" else {}
    out: dict[str, ModelScores] = {}
    for model, model_folders in group_by_model(folders).items():
        notes: list[str] = []
        tasks: dict[str, float | None] = {}
        sources: dict[str, str] = {}
        task_results: list[Any] = []
        for task in bench.tasks:
            value: float | None = None
            for folder in model_folders:
                if rule == "legacy":
                    pick: MetricPicker = lambda e, t=task: _pick_metric(e, t, bench, "legacy")  # noqa: E731
                    found = raw_score(folder, task, pick, notes, relax_split=True)
                    if found is not None:
                        value = legacy_round(found[0], folder.kind)
                        sources[task.label] = found[1]
                        break
                else:
                    got = _mteb2_raw(folder, task, mteb_tasks.get(task.label), bench, notes)
                    if got is not None:
                        tr, raw, src = got
                        value = raw * 100
                        sources[task.label] = src
                        if tr is not None:
                            task_results.append(tr)
                        break
            tasks[task.label] = value
        missing = [label for label, v in tasks.items() if v is None]
        categories: dict[str, float | None] = {}
        for cat in bench.categories:
            vals = [tasks[t.label] for t in bench.tasks if t.category == cat]
            if any(v is None for v in vals):
                categories[cat] = None
            elif rule == "legacy":
                categories[cat] = legacy_mean(vals)  # type: ignore[arg-type]
            else:
                categories[cat] = float(np.mean(vals))
        average: float | None = None
        if not missing:
            vals = list(tasks.values())
            if rule == "legacy":
                average = legacy_mean(vals)  # type: ignore[arg-type]
            elif (
                len(task_results) == len(vals)
                and not any(t.metric for t in bench.tasks)
                and (bench.metric == "main_score")
            ):
                average = 100 * _mteb_mean_task(task_results)  # type: ignore[operator]
            else:
                average = float(np.mean(vals))
        out[model] = ModelScores(model, tasks, categories, average, missing, notes, sources)
    return out


# ---------------------------------------------------------------- published reference numbers


def load_published(bench: Benchmark, published_dir: Path = PUBLISHED_DIR) -> dict[str, ModelScores]:
    """Published per-task values of the benchmark's tasks, with averages by the legacy rule.

    The published headlines are themselves legacy means of the published 2-decimal task values, so the
    same rule gives them back (tested against the stored headlines).
    """
    if not bench.published:
        return {}
    path = published_dir / bench.published
    data = read_json(path)
    out: dict[str, ModelScores] = {}
    for model, info in data.items():
        if model.startswith("_"):
            continue
        if not isinstance(info, dict) or "tasks" not in info:
            raise BenchmarkError(f"{path}: key '{model}.tasks' missing")
        tasks = {t.label: (info["tasks"].get(t.label) or {}).get("published") for t in bench.tasks}
        if all(v is None for v in tasks.values()):
            continue
        missing = [k for k, v in tasks.items() if v is None]
        cats: dict[str, float | None] = {}
        for cat in bench.categories:
            vals = [tasks[t.label] for t in bench.tasks if t.category == cat]
            cats[cat] = None if any(v is None for v in vals) else legacy_mean(vals)  # type: ignore[arg-type]
        avg = None if missing else legacy_mean(list(tasks.values()))  # type: ignore[arg-type]
        out[model] = ModelScores(model, tasks, cats, avg, missing)
    return out
