"""Leaderboard submission files, validated before they are written.

Owns: turning one result folder (`results/<org__model>/<revision>/`) into what a submission needs
(../shared/reference/mteb-submission-checks.md):
  - `<out>/results/<org__model>/<revision>/<Task>.json` + `model_meta.json`: mteb's results-repository
    layout, the files rewritten by mteb's own `TaskResult.to_disk`;
  - `<out>/model-index.yaml`: model-card front matter with a `model-index` block in the mteb 1.x
    `create_meta` convention of the NV-Embed cards (every metric x100, `MTEB <Task> (<subset>)` names,
    cosine AP listed before max AP); card metadata only, no longer a leaderboard route;
  - `<out>/SUBMISSION.md`: the results-repository PR checklist, the scores, and every warning.
Everything is first written to a temporary folder and read back with mteb's loaders (`TaskResult.from_disk`
+ `validate_and_filter_scores` + `get_score` per file, and `ResultCache.load_results` on the folder); the
YAML is parsed back with huggingface_hub. Only then does the temporary folder become `<out>`.

Must not know: how results are produced, or benchmarks and averaging.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.results.load import LEGACY_REVISIONS, ResultFolder, find_result_folders, load_task_result

MAX_FILE_BYTES = 10 * 1024 * 1024  # results repo CI: check_file_sizes.yml
_REVISION = re.compile(r"^([0-9a-f]{40}|.)$")  # test_ensure_correct_metadata.py
_AP_FIRST = ("cos_sim_ap", "cosine_ap")  # the legacy leaderboard took the first AP metric listed
_SCORE_TOL = 5e-7  # to_disk rounds scores to 6 decimals

PR_CHECKLIST = """\
- [ ] The model has a model sheet, report or similar.
- [ ] The model has a reference implementation in mteb/models/model_implementations/ (an API is fine),
      or an mteb PR adding it is linked.
- [ ] The results were obtained with that reference implementation.
- [ ] The model is publicly available (public API or public weights).
- [ ] Nothing was trained on the evaluation datasets (including their training splits), or it is disclosed.
"""


class SubmissionError(HarnessError):
    """The results cannot be submitted as they are; the message names the file and what to fix."""


@dataclass
class Submission:
    out: Path
    model: str
    revision: str
    scores: dict[str, float]  # task -> mteb score (0-1) after validate_and_filter_scores
    notes: list[str] = field(default_factory=list)


def _mteb() -> Any:
    from harness.mteb_import import import_mteb

    return import_mteb()


def resolve_folder(results_dir: Path | str) -> ResultFolder:
    """The single (model, revision) folder under `results_dir`."""
    folders = [f for f in find_result_folders(results_dir) if f.files]
    if len(folders) != 1:
        found = ", ".join(str(f.path) for f in folders) or "none"
        raise SubmissionError(
            f"{results_dir}: expected exactly one <org__model>/<revision> folder, found {found}"
        )
    return folders[0]


def check_model(folder: ResultFolder, allow_unregistered: bool, notes: list[str]) -> dict[str, Any]:
    """model_meta.json against the results repo's tests and mteb's registry; returns the meta."""
    meta_path = folder.path / "model_meta.json"
    meta = folder.model_meta
    if meta is None:
        raise SubmissionError(f"{meta_path}: missing (every revision folder needs mteb's ModelMeta dump)")
    name, revision = meta.get("name"), meta.get("revision")
    if not isinstance(name, str) or "/" not in name:
        raise SubmissionError(f"{meta_path}: key 'name' = {name!r} must be '<org>/<model>'")
    if revision != folder.revision:
        raise SubmissionError(
            f"{meta_path}: key 'revision' = {revision!r} differs from folder {folder.revision!r}"
        )
    if folder.revision in LEGACY_REVISIONS or not _REVISION.match(folder.revision):
        raise SubmissionError(
            f"{folder.path}: revision {folder.revision!r} must be a 40-character lower-case commit hash "
            "(or one character for an API version)"
        )
    expected_dir = name.replace("/", "__").replace(" ", "_")
    if folder.path.parent.name != expected_dir:
        notes.append(
            f"folder {folder.path.parent.name!r} renamed to {expected_dir!r} (from model_meta.json name)"
        )
    mteb = _mteb()
    try:
        registered = mteb.get_model_meta(name)
    except Exception as err:  # KeyError/ValueError: not in the registry
        msg = (
            f"{meta_path}: model {name!r} is not in mteb's model registry; the results repository only "
            "accepts registered models (add a ModelMeta to mteb first)"
        )
        if not allow_unregistered:
            raise SubmissionError(msg + "; --allow-unregistered writes the files anyway") from err
        notes.append(msg)
        return meta
    if registered.revision and registered.revision != revision:
        notes.append(f"mteb's registry has revision {registered.revision} for {name}; this is {revision}")
    reference = json.loads(json.dumps(registered.to_dict(), default=str))
    differing = sorted(k for k in reference if k in meta and meta[k] != reference[k])
    if differing:
        notes.append(f"model_meta.json differs from mteb.get_model_meta({name!r}) in: {', '.join(differing)}")
    return meta


def check_tasks(folder: ResultFolder, notes: list[str]) -> dict[str, tuple[Any, Any, float]]:
    """Each task file loaded and validated by mteb: {task: (TaskResult, mteb task, score 0-1)}."""
    mteb = _mteb()
    out: dict[str, tuple[Any, Any, float]] = {}
    for stem, path in folder.files.items():
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SubmissionError(f"{path}: larger than 10 MiB, which the results repository refuses")
        tr = load_task_result(path)
        if tr.task_name != stem:
            raise SubmissionError(f"{path}: key 'task_name' = {tr.task_name!r} differs from the file name")
        try:
            task = mteb.get_task(tr.task_name)
        except Exception as err:
            raise SubmissionError(f"{path}: key 'task_name' = {tr.task_name!r} is not an mteb task") from err
        with warnings.catch_warnings():  # mteb warns of missing splits; the error below names them
            warnings.simplefilter("ignore")
            filtered = tr.validate_and_filter_scores(task)
        missing = {s: subs for s, subs in tr.get_missing_evaluations(task).items() if subs}
        score = float(filtered.get_score())
        if missing or math.isnan(score):
            raise SubmissionError(f"{path}: missing eval splits/subsets {missing}: the task would score NaN")
        for split, entries in filtered.scores.items():
            for entry in entries:
                value = entry.get("main_score")
                if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise SubmissionError(
                        f"{path}: key 'scores.{split}[{entry.get('hf_subset')}].main_score' = {value!r}: "
                        "must be on the 0-1 scale"
                    )
        if tr.dataset_revision != task.metadata.revision and not task.is_aggregate:
            notes.append(
                f"{stem}: dataset_revision {tr.dataset_revision} is not mteb's current "
                f"{task.metadata.revision}"
            )
        out[stem] = (tr, task, score)
    if not out:
        raise SubmissionError(f"{folder.path}: no task result files")
    return out


def _metric_items(entry: dict[str, Any]) -> list[tuple[str, float]]:
    items = [
        (k, float(v))
        for k, v in entry.items()
        if k not in ("hf_subset", "languages", "main_score")
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
    ]
    first = [kv for kv in items if kv[0] in _AP_FIRST]
    rest = [kv for kv in items if kv[0] not in _AP_FIRST]
    main = entry.get("main_score")
    tail = [("main_score", float(main))] if isinstance(main, (int, float)) else []
    return first + rest + tail


def model_index(model: str, results: dict[str, tuple[Any, Any, float]]) -> dict[str, Any]:
    """Card front matter: `tags` and a single `model-index` list; one result per (task, split, subset)."""
    entries = []
    for name in sorted(results):
        tr, task, _ = results[name]
        filtered = tr.validate_and_filter_scores(task)
        path = task.metadata.dataset.get("path", "")
        dataset_type = path if "/" in path else f"{name}_is_a_combined_dataset"
        for split in sorted(filtered.scores):
            for entry in filtered.scores[split]:
                subset = entry["hf_subset"]
                entries.append(
                    {
                        "task": {"type": task.metadata.type},
                        "dataset": {
                            "type": dataset_type,
                            "name": f"MTEB {name}" if subset == "default" else f"MTEB {name} ({subset})",
                            "config": subset,
                            "split": split,
                            "revision": tr.dataset_revision,
                        },
                        "metrics": [{"type": k, "value": round(v * 100, 6)} for k, v in _metric_items(entry)],
                    }
                )
    return {"tags": ["mteb"], "model-index": [{"name": model.split("/", 1)[1], "results": entries}]}


def render_front_matter(card: dict[str, Any]) -> str:
    body = yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=1000)
    return (
        "# model-index in the mteb 1.x create_meta convention (metrics x100); paste into the model card.\n"
        f"---\n{body}---\n"
    )


def verify_model_index(text: str, results: dict[str, tuple[Any, Any, float]], path: Path) -> None:
    """The YAML parses (also through huggingface_hub's model-index reader) and carries every task."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    body = text.split("---\n", 1)[1].rsplit("---\n", 1)[0]
    card = yaml.safe_load(body)
    model_index_to_eval_results(card["model-index"])
    got = {(r["dataset"]["name"], r["dataset"]["split"]): r for r in card["model-index"][0]["results"]}
    for name, (tr, task, _) in results.items():
        for split, entries in tr.validate_and_filter_scores(task).scores.items():
            for entry in entries:
                subset = entry["hf_subset"]
                key = (f"MTEB {name}" if subset == "default" else f"MTEB {name} ({subset})", split)
                if key not in got:
                    raise SubmissionError(f"{path}: no model-index entry for {key[0]} [{split}]")
                values = {m["type"]: m["value"] for m in got[key]["metrics"]}
                if abs(values.get("main_score", math.nan) - 100 * entry["main_score"]) > 1e-4:
                    raise SubmissionError(f"{path}: main_score of {key[0]} [{split}] does not match its file")


def verify_results(root: Path, model: str, revision: str, results: dict[str, tuple[Any, Any, float]]) -> None:
    """mteb reads the written folder back, per file and through ResultCache, with the same scores."""
    from harness.results.load import load_task_result as load

    _mteb()
    from mteb.cache import ResultCache

    folder = root / "results" / model.replace("/", "__").replace(" ", "_") / revision
    for name, (_, task, score) in results.items():
        again = float(load(folder / f"{name}.json").validate_and_filter_scores(task).get_score())
        if not abs(again - score) <= _SCORE_TOL:
            raise SubmissionError(f"{folder / name}.json: mteb reads {again}, the source said {score}")
    loaded = ResultCache(root).load_results(
        tasks=sorted(results), validate_and_filter=True, include_remote=False, require_model_meta=True
    )
    mine = [m for m in loaded if m.model_name == model and m.model_revision == revision]
    if len(mine) != 1:
        raise SubmissionError(f"{folder}: mteb's ResultCache does not find {model} at {revision}")
    seen = {tr.task_name: float(tr.get_score()) for tr in mine[0].task_results}
    for name, (_, _, score) in results.items():
        if name not in seen or not abs(seen[name] - score) <= _SCORE_TOL:
            raise SubmissionError(f"{folder}: ResultCache gives {name} = {seen.get(name)}, expected {score}")


def _submission_md(
    model: str, revision: str, results: dict[str, tuple[Any, Any, float]], notes: list[str]
) -> str:
    lines = [
        f"# Submission: {model} @ {revision}",
        "",
        "Copy `results/` into a fork of github.com/embeddings-benchmark/results and open a pull request;",
        "the model must already be in mteb's model registry. `model-index.yaml` is model-card metadata only.",
        "",
        "## Scores (mteb main score, x100)",
        "",
        "| task | score |",
        "|---|---:|",
        *[f"| {name} | {100 * results[name][2]:.2f} |" for name in sorted(results)],
        "",
        "## Pull-request checklist (results repository template)",
        "",
        PR_CHECKLIST,
        "## Warnings",
        "",
        *([f"- {n}" for n in notes] or ["- none"]),
        "",
    ]
    return "\n".join(lines)


def write_submission(
    results_dir: Path | str, out: Path | str, allow_unregistered: bool = False, force: bool = False
) -> Submission:
    """Validate `results_dir`, write the submission to a temporary folder, read it back, move it to `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise SubmissionError(f"{out}: exists and is not empty (use --force to replace it)")
    folder = resolve_folder(results_dir)
    notes: list[str] = []
    meta = check_model(folder, allow_unregistered, notes)
    model, revision = str(meta["name"]), folder.revision
    results = check_tasks(folder, notes)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        dest = tmp / "results" / model.replace("/", "__").replace(" ", "_") / revision
        dest.mkdir(parents=True)
        for name, (tr, _, _) in results.items():
            tr.to_disk(dest / f"{name}.json")
            if (dest / f"{name}.json").stat().st_size > MAX_FILE_BYTES:
                raise SubmissionError(f"{folder.files[name]}: over 10 MiB once written")
        (dest / "model_meta.json").write_text(json.dumps(meta, indent=4, default=str), encoding="utf-8")
        card_text = render_front_matter(model_index(model, results))
        (tmp / "model-index.yaml").write_text(card_text, encoding="utf-8")
        verify_results(tmp, model, revision, results)
        verify_model_index(card_text, results, tmp / "model-index.yaml")
        (tmp / "SUBMISSION.md").write_text(_submission_md(model, revision, results, notes), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return Submission(out, model, revision, {k: v[2] for k, v in results.items()}, notes)
