"""Reading result files: the one place that opens them.

Owns: finding result folders under a path, and parsing every format the harness meets into one in-memory
record (`TaskFile`):
  - our layout and mteb's results-repository layout: `<root>/<org__model>/<revision>/<Task>.json`
    (a TaskResult JSON, mteb >= 1.11) with `model_meta.json` beside it, and our `harness/` subfolder
    holding `<Task>.per_query.json` and `<Task>.provenance.json`;
  - the old pre-1.11 format (`mteb_dataset_name`, one key per split, nested `cos_sim: {spearman}` metrics);
  - `external/` folders: model-card `model-index` values converted to TaskResult JSON by the results repo.
Also hands out mteb `TaskResult` objects for code that wants mteb's own validation (imported lazily, so
reading files stays fast and works where mteb is not installed).

Must not know: benchmarks, averaging rules, rounding or rendering (see harness.report.aggregate).
Scores are kept on the files' 0-1 scale; metric order within an entry is the file's order, because the
legacy leaderboard picked "the first listed metric of the right kind".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import DataFormatError

# Revision folder names the results repository uses for data that did not come from a pinned mteb run.
EXTERNAL = "external"
NO_REVISION = "no_revision_available"
LEGACY_REVISIONS = (EXTERNAL, NO_REVISION)

# Files that sit in result folders but hold no task scores.
_NOT_TASK_FILES = {"model_meta.json"}
_NOT_TASK_SUFFIXES = (".per_query.json", ".provenance.json")
# Folders that hold no task results: our sidecars, mteb's experiment runs, and the project's own
# reference numbers and regression files beside the runs in `results/`.
_SKIPPED_DIRS = {"harness", "experiments", "__pycache__", "published", "expected"}
# Nested metric groups of the pre-1.11 format (mteb's own list in TaskResult._convert_from_before_v1_11_0).
_OLD_METRIC_GROUPS = {"v_measures", "cos_sim", "euclidean", "manhattan", "dot", "max"}

Scores = dict[str, dict[str, dict[str, float]]]  # split -> hf_subset -> metric -> value (0-1 scale)


class ResultFileError(DataFormatError):
    """A result file that cannot be read as any known format; the message names the file and key."""


@dataclass
class TaskFile:
    """One task's scores from one file, whatever its format."""

    path: Path
    model: str
    revision: str
    task_name: str
    kind: str  # "mteb" (TaskResult format), "external" (model card as JSON) or "pre-1.11"
    mteb_version: str | None
    dataset_revision: str | None
    scores: Scores

    def entry(self, split: str, subset: str) -> dict[str, float] | None:
        """The metrics of one (split, subset), or None."""
        return self.scores.get(split, {}).get(subset)

    def splits_with(self, subset: str) -> list[str]:
        """The splits that hold `subset`."""
        return [split for split, subsets in self.scores.items() if subset in subsets]


@dataclass
class ResultFolder:
    """One (model, revision) folder, or a single task file given on its own."""

    path: Path
    model: str
    revision: str
    files: dict[str, Path]  # task name (file stem) -> path: the files selected
    model_meta: dict[str, Any] | None = None
    # every task file in the directory, also when one file was selected: an aggregate's subtasks beside it
    # decide whether the aggregate is whole (see harness.report.aggregate.raw_score)
    on_disk: dict[str, Path] = field(default_factory=dict)
    _cache: dict[str, TaskFile] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.on_disk = {**self.files, **self.on_disk}

    @property
    def kind(self) -> str:
        return EXTERNAL if self.revision == EXTERNAL else "mteb"

    @property
    def is_legacy(self) -> bool:
        return self.revision in LEGACY_REVISIONS

    def has(self, task: str) -> bool:
        return task in self.files

    def has_on_disk(self, task: str) -> bool:
        return task in self.on_disk

    def load(self, task: str) -> TaskFile:
        """Parse the file of `task` (cached); a file beside the selected ones may be loaded too."""
        if task not in self._cache:
            self._cache[task] = load_task_file(self.on_disk[task], model=self.model, revision=self.revision)
        return self._cache[task]

    def per_query_path(self, task: str) -> Path:
        """Where our run path writes the per-query scores of `task` for this folder."""
        return self.path / "harness" / f"{task}.per_query.json"


def model_name_from_folder(folder_name: str) -> str:
    """`org__model` -> `org/model` (the results repository's folder naming)."""
    return folder_name.replace("__", "/")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file."""
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ResultFileError(f"{path}: not valid JSON ({err})") from err


def load_model_meta(folder: Path) -> dict[str, Any] | None:
    """`model_meta.json` of a revision folder, or None when there is none."""
    meta_path = folder / "model_meta.json"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise ResultFileError(f"{meta_path}: expected a JSON object")
    return meta


def _is_task_file(path: Path) -> bool:
    return (
        path.suffix == ".json"
        and path.name not in _NOT_TASK_FILES
        and not path.name.endswith(_NOT_TASK_SUFFIXES)
    )


def _revision_folder(path: Path) -> ResultFolder:
    meta = load_model_meta(path)
    # The folder names decide model and revision when there is no meta (old folders).
    model = str(meta["name"]) if meta and meta.get("name") else model_name_from_folder(path.parent.name)
    files = {p.name[: -len(".json")]: p for p in sorted(path.iterdir()) if p.is_file() and _is_task_file(p)}
    return ResultFolder(path=path, model=model, revision=path.name, files=files, model_meta=meta)


def _revision_rank(folder: ResultFolder) -> tuple[int, str]:
    # mteb-run revisions first, then the model card, then the 2022 run: the legacy leaderboard's
    # precedence (results repo first, the card fills the gaps).
    order = {EXTERNAL: 1, NO_REVISION: 2}
    return order.get(folder.revision, 0), folder.revision


def find_result_folders(path: Path | str) -> list[ResultFolder]:
    """Every result folder under `path`, in precedence order.

    `path` may be a task JSON file, a revision folder, a model folder (`org__model/`) or a results root
    holding model folders. Within one model folder, revisions come in `_revision_rank` order.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such result file or folder")
    if path.is_file():
        if not _is_task_file(path):
            raise ResultFileError(f"{path}: not a task result file (expected <TaskName>.json)")
        folder = _revision_folder(path.parent)
        folder.files = {path.name[: -len(".json")]: path}
        return [folder]
    if any(_is_task_file(p) for p in path.iterdir() if p.is_file()):
        return [_revision_folder(path)]
    subdirs = sorted(
        p for p in path.iterdir() if p.is_dir() and p.name not in _SKIPPED_DIRS and not p.name.startswith(".")
    )
    holds_revisions = any(any(_is_task_file(q) for q in sub.iterdir() if q.is_file()) for sub in subdirs)
    if holds_revisions:  # a model folder
        folders = [_revision_folder(sub) for sub in subdirs]
        folders = [f for f in folders if f.files]
        return sorted(folders, key=_revision_rank)
    out: list[ResultFolder] = []
    for sub in subdirs:  # a results root
        out.extend(find_result_folders(sub))
    return out


def find_all(paths: Iterable[Path | str]) -> list[ResultFolder]:
    """`find_result_folders` over several paths, keeping the given order (earlier paths take precedence)."""
    out: list[ResultFolder] = []
    for p in paths:
        out.extend(find_result_folders(p))
    return out


def _flatten_metrics(raw: dict[str, Any], path: Path, where: str) -> dict[str, float]:
    """Numeric metrics of one score entry, in file order; nested groups become `group_metric`."""
    flat: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            flat[key] = float(value)
        elif isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if isinstance(sub_value, (int, float)) and not isinstance(sub_value, bool):
                    flat[f"{key}_{sub_key}"] = float(sub_value)
        elif value is None and key == "main_score":
            raise ResultFileError(f"{path}: {where}: main_score is null")
    return flat


def _parse_taskresult(data: dict[str, Any], path: Path) -> tuple[str, Scores]:
    if "mteb_version" not in data:
        raise ResultFileError(f"{path}: key 'mteb_version' missing (mteb reads such a file as pre-1.11)")
    scores_raw = data.get("scores")
    if not isinstance(scores_raw, dict):
        raise ResultFileError(f"{path}: key 'scores' must be an object {{split: [entries]}}")
    scores: Scores = {}
    for split, entries in scores_raw.items():
        if not isinstance(entries, list):
            raise ResultFileError(f"{path}: scores.{split} must be a list of entries")
        for i, entry in enumerate(entries):
            subset = entry.get("hf_subset")
            if not isinstance(subset, str):
                raise ResultFileError(f"{path}: scores.{split}[{i}].hf_subset missing or not a string")
            scores.setdefault(split, {})[subset] = _flatten_metrics(entry, path, f"scores.{split}[{i}]")
    return str(data["task_name"]), scores


def _parse_pre_1_11(data: dict[str, Any], path: Path) -> tuple[str, Scores]:
    meta_keys = {"mteb_version", "mteb_dataset_name", "dataset_revision"}
    splits = {k: v for k, v in data.items() if k not in meta_keys}
    # Same test as mteb's converter: a split holds subsets when it has dicts that are not metric groups.
    has_subsets = any(
        isinstance(v, dict) and k not in _OLD_METRIC_GROUPS
        for split_scores in splits.values()
        if isinstance(split_scores, dict)
        for k, v in split_scores.items()
    )
    scores: Scores = {}
    for split, split_scores in splits.items():
        if not isinstance(split_scores, dict):
            raise ResultFileError(f"{path}: key '{split}' should hold a split's scores")
        per_subset = split_scores if has_subsets else {"default": split_scores}
        for subset, metrics in per_subset.items():
            if subset == "evaluation_time" or not isinstance(metrics, dict):
                continue
            flat = _flatten_metrics(metrics, path, f"{split}.{subset}")
            flat.pop("evaluation_time", None)
            scores.setdefault(split, {})[subset] = flat
    return str(data["mteb_dataset_name"]), scores


def load_task_file(path: Path | str, model: str | None = None, revision: str | None = None) -> TaskFile:
    """Parse one task result file of any supported format."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: expected a JSON object")
    if "task_name" in data and "scores" in data:
        task_name, scores = _parse_taskresult(data, path)
        kind = "mteb"
    elif "mteb_dataset_name" in data:
        task_name, scores = _parse_pre_1_11(data, path)
        kind = "pre-1.11"
    else:
        raise ResultFileError(f"{path}: neither a TaskResult ('task_name', 'scores') nor a pre-1.11 file")
    revision = revision if revision is not None else path.parent.name
    if revision == EXTERNAL:
        kind = EXTERNAL
        # Cards written by mteb_meta.py carry 0.0 placeholders (e.g. mrr_at_*); they are not scores.
        for subsets in scores.values():
            for metrics in subsets.values():
                for key in [k for k, v in metrics.items() if v == 0.0 and k != "main_score"]:
                    del metrics[key]
    return TaskFile(
        path=path,
        model=model if model is not None else model_name_from_folder(path.parent.parent.name),
        revision=revision,
        task_name=task_name,
        kind=kind,
        mteb_version=data.get("mteb_version"),
        dataset_revision=data.get("dataset_revision"),
        scores=scores,
    )


def load_task_result(path: Path | str) -> Any:
    """The file as an mteb `TaskResult` (mteb's own loader, all formats it knows)."""
    from harness.mteb_import import import_mteb

    import_mteb()
    from mteb.results import TaskResult

    path = Path(path)
    try:
        return TaskResult.from_disk(path)
    except Exception as err:  # pydantic and KeyError alike: say which file
        raise ResultFileError(f"{path}: mteb cannot load it: {err}") from err


PerQuery = dict[str, dict[str, dict[str, dict[str, float]]]]  # split -> subset -> metric -> qid -> value


def load_per_query(path: Path | str) -> PerQuery:
    """A `<Task>.per_query.json` file: {split: {subset: {metric: {qid: value}}}}."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: expected {{split: {{subset: {{metric: {{qid: value}}}}}}}}")
    for split, subsets in data.items():
        if not isinstance(subsets, dict):
            raise ResultFileError(f"{path}: key '{split}' must map subsets to metrics")
        for subset, metrics in subsets.items():
            if not isinstance(metrics, dict):
                raise ResultFileError(f"{path}: key '{split}.{subset}' must map metrics to per-query values")
            for metric, per_q in metrics.items():
                if not isinstance(per_q, dict):
                    raise ResultFileError(
                        f"{path}: key '{split}.{subset}.{metric}' must map query ids to values"
                    )
    return data


def iter_per_query_files(path: Path | str) -> Iterator[tuple[str, Path]]:
    """(task name, per-query file) pairs for a run: a revision folder, its `harness/` folder, or one file."""
    path = Path(path)
    if path.is_file():
        name = path.name
        yield (name[: -len(".per_query.json")] if name.endswith(".per_query.json") else path.stem), path
        return
    folder = path if path.name == "harness" else path / "harness"
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no harness/ folder with per-query files")
    for p in sorted(folder.glob("*.per_query.json")):
        yield p.name[: -len(".per_query.json")], p
