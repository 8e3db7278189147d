"""The one place that writes result files, always atomically (temp file in the same folder, fsync, rename).

Layout (mteb's results layout, loadable by ``mteb.ResultCache`` when ``output_dir`` is named ``results``):

    <output_dir>/<org__model>/<revision>/<Task>.json          mteb TaskResult (written last: its presence = done)
    <output_dir>/<org__model>/<revision>/model_meta.json      mteb ModelMeta
    <output_dir>/<org__model>/<revision>/harness/<Task>.*     provenance, per-query scores, run (ours; mteb's
                                                              loader globs only */*/*.json, so it never sees them)
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

SIDECAR_DIR = "harness"


def model_dir_name(model_name: str) -> str:
    """mteb's ``model_name_as_path``: ``org/name`` → ``org__name``."""
    return model_name.replace("/", "__").replace(" ", "_")


def results_dir(output_dir: str | Path, model_name: str, revision: str | None) -> Path:
    return Path(output_dir) / model_dir_name(model_name) / (revision or "no_revision_available")


def task_result_path(folder: Path, task_name: str) -> Path:
    return folder / f"{task_name}.json"


def sidecar_path(folder: Path, task_name: str, kind: str) -> Path:
    """``kind``: ``provenance.json``, ``per_query.json``, ``run.trec.gz``."""
    return folder / SIDECAR_DIR / f"{task_name}.{kind}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str, ensure_ascii=False) + "\n")


def write_trec_run(path: Path, run: Mapping[str, Mapping[str, float]], tag: str, depth: int = 100) -> None:
    """A TREC run file (gzip): ``qid Q0 docid rank score tag``, ties ordered as pytrec_eval orders them."""

    def write(tmp: Path) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as handle:
            for qid in sorted(run):
                ranked = sorted(run[qid].items(), key=lambda item: (item[1], item[0]), reverse=True)[:depth]
                for rank, (doc_id, score) in enumerate(ranked, start=1):
                    handle.write(f"{qid} Q0 {doc_id} {rank} {score:.7g} {tag}\n")

    atomic_write(path, write)


def write_task_result(
    folder: Path, task_result: Any, model_meta: Any, sidecars: Mapping[str, Any] | None = None
) -> Path:
    """Write sidecars, then ``model_meta.json``, then the TaskResult; returns the TaskResult path."""
    for kind, obj in (sidecars or {}).items():
        atomic_write_json(sidecar_path(folder, task_result.task_name, kind), obj)
    atomic_write_text(folder / "model_meta.json", json.dumps(model_meta.to_dict(), default=str, indent=4))
    path = task_result_path(folder, task_result.task_name)
    atomic_write(path, lambda tmp: task_result.to_disk(tmp))
    return path


def load_finished(folder: Path, task_name: str) -> Any | None:
    """The TaskResult already on disk for this task, or None (a file that does not load counts as absent)."""
    path = task_result_path(folder, task_name)
    if not path.is_file():
        return None
    from harness.mteb_import import import_mteb

    import_mteb()
    from mteb.results import TaskResult

    try:
        result = TaskResult.from_disk(path)
    except Exception:  # a damaged file is recomputed, never trusted
        return None
    return result if result.task_name == task_name else None
