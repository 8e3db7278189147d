"""A local BEIR folder as an mteb retrieval task, so that mteb's own evaluator scores it.

When the task is named after a registered mteb task (``SciFact``), the registered class is subclassed: its metadata
(dataset revision, prompt, main score), ``ignore_identical_ids`` and ``k_values`` carry over, and the result file is
the one the leaderboard knows. A multilingual registered task takes the folder as one of its subsets
(``task.subset=de``). Any other name gets fresh metadata (``dataset.revision = "local"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.mteb_import import import_mteb
from harness.tasks.beir_local import BeirData, load_beir_folder


def _registered(name: str) -> Any | None:
    mteb = import_mteb()
    try:
        return mteb.get_task(name)
    except KeyError:
        return None


def build_beir_task(
    name: str,
    path: str | Path,
    split: str = "test",
    subset: str | None = None,
    languages: list[str] | None = None,
    main_score: str = "ndcg_at_10",
    use_mteb_metadata: bool | str = "auto",
    allow_empty_documents: bool = False,
    result_split: str | None = None,
) -> Any:
    """An mteb task object whose ``load_data`` reads ``path`` (validated eagerly, so bad data fails first)."""
    import_mteb()  # sets MTEB_CACHE before any mteb submodule is imported
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    data: BeirData = load_beir_folder(path, split, allow_empty_documents=allow_empty_documents)
    # the split name the result records: mteb's XQuADRetrieval calls its only split "validation"
    split_name = result_split or split
    registered = _registered(name) if use_mteb_metadata in (True, "auto") else None
    if use_mteb_metadata is True and registered is None:
        raise ConfigError(f"task.use_mteb_metadata=true but mteb has no task named {name!r}")
    if registered is not None and not isinstance(registered, AbsTaskRetrieval):
        raise ConfigError(f"task.name={name!r} is a registered mteb {registered.metadata.type} task, not retrieval")

    if registered is not None:
        base: type = type(registered)
        meta = registered.metadata.model_copy(update={"eval_splits": [split_name]})
        if meta.is_multilingual:
            if subset is None:
                raise ConfigError(
                    f"{name} is multilingual in mteb: set task.subset to one of {sorted(meta.eval_langs)} "
                    "(the folder holds one language), or give the task another name"
                )
            if subset not in meta.eval_langs:
                raise ConfigError(f"task.subset={subset!r}: {name} has subsets {sorted(meta.eval_langs)}")
        hf_subset = subset if meta.is_multilingual else "default"
    else:
        base = AbsTaskRetrieval
        meta = TaskMetadata(
            name=name,
            description=f"Local BEIR-layout folder {Path(path).name}",
            dataset={"path": f"local/{name}", "revision": "local"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[split_name],
            eval_langs=list(languages or ["eng-Latn"]),
            main_score=main_score,
        )
        hf_subset = "default"

    def load_data(self: Any, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        corpus_ids = list(data.corpus)
        corpus = Dataset.from_dict(
            {
                "id": corpus_ids,
                "title": [data.corpus[i]["title"] for i in corpus_ids],
                "text": [data.corpus[i]["text"] for i in corpus_ids],
            }
        )
        queries = Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())})
        qrels = {qid: dict(docs) for qid, docs in data.qrels.items()}
        split_data = RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=qrels, top_ranked=None)
        self.dataset = {hf_subset: {split_name: split_data}}
        self.data_loaded = True

    # metadata must be a class attribute: mteb's unload_data() drops instance attributes
    cls = type(f"Local{name.replace('-', '_')}", (base,), {"metadata": meta, "load_data": load_data})
    task = cls()
    if meta.is_multilingual:
        task.hf_subsets = [hf_subset]
    task.local_data = data  # for provenance: which files were read
    return task
