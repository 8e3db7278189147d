"""The run path: one model, one or more tasks, scored by mteb, written atomically, summarised in a table.

``run(cfg)`` takes the composed Hydra config (``conf/config.yaml`` + model + task or benchmark). Data is read and
validated before the model loads, so bad input fails in seconds and leaves no result file. A task whose result file
already exists (and loads) is skipped unless ``overwrite=true``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import PROJECT_ROOT
from harness.errors import ConfigError
from harness.models.registry import adapter_class, build_adapter
from harness.mteb_import import import_mteb
from harness.results.io import load_finished, results_dir, sidecar_path, write_task_result, write_trec_run
from harness.results.per_query import mean_scores, per_query_scores
from harness.results.provenance import build_provenance
from harness.tasks.registry import load_task

log = logging.getLogger(__name__)

RUNTIME_OVERRIDES = ("device", "dtype", "batch_size", "show_progress")


@dataclass
class TaskOutcome:
    task_name: str
    path: Path
    scores: dict[str, list[dict[str, Any]]]
    skipped: bool = False
    notes: list[str] = field(default_factory=list)


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The model entry, with the top-level runtime keys (device, dtype, batch_size) applied when set."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model, dict)
    for key in RUNTIME_OVERRIDES:
        value = cfg.get(key)
        if value is not None:
            model[key] = value
    return model


def task_configs(cfg: DictConfig) -> list[dict[str, Any]]:
    """The tasks to run: the benchmark's list when ``benchmark`` is set, else the one ``task``."""
    bench = cfg.get("benchmark")
    if bench:
        merged: dict[str, dict[str, Any]] = {}
        entries = []
        for i, entry in enumerate(bench.get("tasks") or []):
            if not entry.get("name"):
                raise ConfigError(f"benchmark {bench.get('name')}: tasks[{i}] has no name")
            # an aggregate (CQADupstackRetrieval) runs as its subtasks: one result file each, averaged by `report`
            for sub in entry.get("subtasks") or [entry["name"]]:
                entries.append({**entry, "name": sub})
        for entry in entries:
            item = merged.setdefault(
                entry["name"], {"kind": "mteb", "name": entry["name"], "splits": [], "subsets": []}
            )
            if entry.get("split") and entry["split"] not in item["splits"]:
                item["splits"].append(entry["split"])
            if entry.get("subset") and entry["subset"] not in item["subsets"]:
                item["subsets"].append(entry["subset"])
        return [{**t, "splits": t["splits"] or None, "subsets": t["subsets"] or None} for t in merged.values()]
    task = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(task, dict)
    return [task]


def resolve_identity(mcfg: dict[str, Any]) -> dict[str, Any]:
    """Adapters whose name or revision derive from other keys (``revision: auto`` in bm25, pipelines) fill them in
    here, from the config alone, so the results folder is known before any model loads."""
    resolve = getattr(adapter_class(str(mcfg["loader"])), "resolve_identity", None) if mcfg.get("loader") else None
    return dict(resolve(mcfg)) if resolve else mcfg


def quiet_libraries(show_progress: bool) -> None:
    """mteb logs every phase at INFO and datasets draws a bar per map; keep the run's output to our lines."""
    for name in ("mteb", "datasets", "sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not show_progress:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def attach_engine(adapter: Any, cfg: DictConfig, ctx: Any) -> None:
    """Embedders encode through the engine: embedding cache, torchrun ranks, progress (harness/engine/)."""
    from harness.engine.encode import EncodeEngine, EngineSettings
    from harness.models.base import EmbeddingAdapter

    if isinstance(adapter, EmbeddingAdapter):
        settings = EngineSettings.from_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        adapter.engine = EncodeEngine(settings, ctx)


def search_model(adapter: Any, task: Any, cfg: DictConfig, timings: dict[str, float]) -> Any:
    """What mteb gets for a task: for a retrieval task and an embedder, the streaming exact search over the
    adapter (it fills ``timings``: encode_queries, encode_corpus, search); otherwise the adapter itself."""
    from harness.models.base import EmbeddingAdapter

    search = cfg.get("search") or {}
    if not (search.get("enabled", True) and isinstance(adapter, EmbeddingAdapter) and _is_retrieval(task)):
        return adapter
    from harness.engine.search import StreamingSearch

    return StreamingSearch(
        adapter,
        ignore_identical_ids=bool(task.ignore_identical_ids),
        device=search.get("device"),
        chunk_rows=search.get("chunk_rows"),
        query_block=search.get("query_block"),
        prefilter=str(search.get("prefilter") or "auto"),
        timings=timings,
    )


def run(cfg: DictConfig) -> list[TaskOutcome]:
    from harness.engine import distributed
    from harness.engine.memory import tune_cpu_allocator

    quiet_libraries(bool(cfg.get("show_progress")))
    tune_cpu_allocator()  # large activations reused from the heap, not page-faulted in per batch
    # torchrun / SLURM ranks: every rank runs this path; only rank 0 writes (harness/engine/distributed.py)
    ctx = distributed.setup("cpu" if str(cfg.get("device")) == "cpu" else None)
    mcfg = resolve_identity(model_config(cfg))
    folder = results_dir(cfg.output_dir, str(mcfg["name"]), mcfg.get("revision"))
    outcomes: list[TaskOutcome] = []
    pending: list[Any] = []
    for tcfg in task_configs(cfg):
        done = None if cfg.get("overwrite") else load_finished(folder, str(tcfg["name"]))
        if done is not None:
            log.info("%s: result exists at %s, skipping (overwrite=true to rerun)", tcfg["name"], folder)
            outcomes.append(TaskOutcome(done.task_name, folder / f"{done.task_name}.json", done.scores, skipped=True))
        else:
            pending.append(tcfg)
    pending = ctx.broadcast(pending)  # rank 0's view of the results folder decides for every rank
    if pending:
        tasks = [load_task(t) for t in pending]  # validates local data before the (slow) model load
        start = time.perf_counter()
        adapter = build_adapter(mcfg)
        attach_engine(adapter, cfg, ctx)
        load_s = time.perf_counter() - start
        for task in tasks:
            outcomes.append(evaluate_task(adapter, task, folder, cfg, {"load_model": load_s}))
            load_s = 0.0
    if not ctx.is_main:
        return outcomes
    from harness.report.run_table import print_run_table

    rerank_depth = mcfg.get("depth") if mcfg.get("loader") == "pipeline" else None
    print_run_table(str(mcfg["name"]), outcomes, rerank_depth=rerank_depth)
    return outcomes


def _is_retrieval(task: Any) -> bool:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return isinstance(task, AbsTaskRetrieval)


def evaluate_task(
    adapter: Any, task: Any, folder: Path, cfg: DictConfig, timings: Mapping[str, float] | None = None
) -> TaskOutcome:
    from harness.engine.distributed import context

    mteb = import_mteb()
    name = task.metadata.name
    timings = dict(timings or {})
    start = time.perf_counter()
    task.load_data()
    timings["load_data"] = time.perf_counter() - start
    main = context().is_main
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    model = search_model(adapter, task, cfg, timings)
    # ranks other than 0 help encode and write nothing: their predictions go to a folder of their own
    with tempfile.TemporaryDirectory(prefix=".predictions-", dir=folder if main else None) as pred_dir:
        start = time.perf_counter()
        model_result = mteb.evaluate(
            model,
            task,
            cache=None,
            overwrite_strategy="always",
            encode_kwargs={"batch_size": adapter.batch_size, "show_progress_bar": bool(cfg.get("show_progress"))},
            prediction_folder=pred_dir,
            show_progress_bar=False,
            co2_tracker=False,
            raise_error=True,
        )
        timings["evaluate"] = time.perf_counter() - start
        task_result = model_result.task_results[0]
        timings.update(_phase_timings(task_result, timings))
        if not main:
            return TaskOutcome(name, folder / f"{name}.json", task_result.scores, notes=["not rank 0: not written"])
        pred_file = Path(pred_dir) / f"{name}_predictions.json"
        predictions = json.loads(pred_file.read_text()) if pred_file.is_file() else {}

    sidecars: dict[str, Any] = {}
    notes: list[str] = []
    runs: dict[str, dict[str, Any]] = {}
    if _is_retrieval(task) and predictions:
        per_query: dict[str, dict[str, Any]] = {}
        for subset, by_split in predictions.items():
            if subset == "mteb_model_meta":
                continue
            for split, run_ in by_split.items():
                qrels = task.dataset[subset][split]["relevant_docs"]
                pq = per_query_scores(qrels, run_, task.ignore_identical_ids, task.skip_first_result)
                per_query.setdefault(split, {})[subset] = pq
                runs[f"{split}.{subset}"] = run_
                notes += _cross_check(name, split, subset, mean_scores(pq), task_result.scores)
        sidecars["per_query.json"] = per_query

    provenance = build_provenance(
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        adapter_description=adapter.describe(),
        prefixes=adapter.prefixes_used.get(name, {}),
        data_files=getattr(getattr(task, "local_data", None), "files", None),
        timings=timings,
        project_root=PROJECT_ROOT,
    )
    provenance["checks"] = notes or ["per-query means equal mteb's scores"]
    search_stats = getattr(model, "stats", None)  # our streaming search: how it ran (prefilter, candidates, rounds)
    if search_stats:
        provenance["search"] = [dataclasses.asdict(stats) for stats in search_stats]
    sidecars["provenance.json"] = provenance
    for key, run_ in runs.items():
        write_trec_run(sidecar_path(folder, name, f"{key}.run.trec.gz"), run_, tag=adapter.name)
    # a pipeline's per-stage runs: <Task>.<split>.<subset>.first_stage.run.trec.gz, ...second_stage...
    extra_runs = getattr(adapter, "extra_runs", None)
    for key, item in (extra_runs(name) if callable(extra_runs) else {}).items():
        run_path = sidecar_path(folder, name, f"{key}.run.trec.gz")
        write_trec_run(run_path, item["run"], tag=item["tag"], depth=item["depth"])
    path = write_task_result(folder, task_result, adapter.mteb_model_meta, sidecars)
    for note in notes:
        log.warning(note)
    return TaskOutcome(name, path, task_result.scores, notes=notes)


def _phase_timings(task_result: Any, timings: Mapping[str, float]) -> dict[str, float]:
    """The provenance's per-phase seconds: load (model + data), encode_queries, encode_corpus, search (filled by
    the streaming search when it ran), score (mteb's "Scoring" phases)."""
    phases = list(getattr(task_result, "evaluation_phases", None) or [])
    out = {"load": timings.get("load_model", 0.0) + timings.get("load_data", 0.0)}
    out["score"] = sum(float(p["end"]) - float(p["start"]) for p in phases if p.get("name") == "Scoring")
    if "encode_corpus" not in timings:  # mteb's own search: its phases, as it names them
        named = {"Encoding queries": "encode_queries", "Encoding corpus": "encode_corpus", "Searching corpus": "search"}
        for phase in phases:
            key = named.get(str(phase.get("name")))
            if key:
                out[key] = out.get(key, 0.0) + float(phase["end"]) - float(phase["start"])
    return out


def _cross_check(
    task: str, split: str, subset: str, means: Mapping[str, float], scores: Mapping[str, list[dict[str, Any]]]
) -> list[str]:
    """Our per-query means must equal mteb's reported means (to mteb's 5-decimal rounding)."""
    entry = next((e for e in scores.get(split, []) if e.get("hf_subset") == subset), None)
    if entry is None:
        return [f"{task} {split}/{subset}: no mteb score entry to cross-check"]
    problems = []
    for metric, value in means.items():
        if metric in entry and abs(round(value, 5) - entry[metric]) > 1.5e-5:
            problems.append(
                f"{task} {split}/{subset}: per-query mean {metric}={value:.6f} != mteb {entry[metric]}"
            )
    return problems
