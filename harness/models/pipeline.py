"""Two-stage retrieval as one mteb SearchProtocol: a first stage retrieves, a second stage reorders its top ``depth``.

Owns: building both stages from config (``conf/model`` entries plus per-stage overrides), the candidate set handed
from stage one to stage two, how the two rankings are merged, the pipeline's name and revision, and the per-stage
runs the run path saves beside the result. Must not know how either stage scores (any SearchProtocol or embedder
first; any object with ``score_pairs`` or any embedder second) and must not import mteb at module level.

Semantics (tested in tests/pipeline/):
* Candidates: stage one's top ``depth`` per query, ranked as pytrec_eval ranks a run (score, then doc id, both
  descending). Stage two scores exactly these; it never adds or drops a document.
* Output: the reranked block first, with stage two's scores; below it (``tail: first_stage``, the default) stage
  one's ranks ``depth+1 ...`` in stage one's order, with scores ``min(block) - 1 - i`` so they rank after the block.
  So Recall@k for k >= depth equals stage one's, and any metric deeper than ``depth`` mixes both stages' orders: the
  run table flags them. ``tail: drop`` returns the block alone.
* Name ``<stage-1 name>+<stage-2 name>`` (mteb's folder naming turns each ``/`` into ``__``, and its result loader
  turns them back), revision ``depth<N>-<hash of both stages' names and revisions and the tail rule>``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from harness.config import load_group_entry
from harness.errors import ConfigError
from harness.models.base import AdapterBase, EmbeddingAdapter

STAGES = ("first_stage", "second_stage")
TAILS = ("first_stage", "drop")
#: keys a stage takes from the pipeline's own config (the CLI's device=, dtype=, batch_size=) unless it sets them
INHERITED_KEYS = ("device", "dtype", "batch_size", "show_progress")
#: keys every adapter accepts even when its conf/model entry lacks them (mirrors registry.RUNTIME_KEYS)
RUNTIME_KEYS = ("device", "dtype", "batch_size", "show_progress")


def stage_config(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The resolved model config of one stage.

    ``cfg[key]`` is a ``conf/model`` entry name, or a mapping with ``model: <entry>`` plus overrides of that entry's
    keys (a null override keeps the entry's value, so YAML files can show the slots users fill), or an inline
    model config (with ``loader`` and ``name``).
    """
    spec = cfg.get(key)
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"model.{key} must name a conf/model entry (e.g. {key}: bm25) or be a mapping "
            f"({{model: <entry>, <key>: <override>}} or an inline model config); got {spec!r}"
        )
    spec = {k: v for k, v in spec.items() if v is not None}
    entry = spec.pop("model", None)
    runtime = {k: spec.pop(k) for k in RUNTIME_KEYS if k in spec}
    if entry:
        try:
            loaded = load_group_entry("model", str(entry), spec)
        except ConfigError as exc:
            raise ConfigError(f"model.{key}: {exc}") from None
        container = OmegaConf.to_container(loaded, resolve=True)
        assert isinstance(container, dict)
    else:
        container = dict(spec)
        for required in ("loader", "name"):
            if not container.get(required):
                raise ConfigError(f"model.{key} is inline (no `model:` entry) and lacks {required!r}")
    for k in INHERITED_KEYS:
        if cfg.get(k) is not None and k not in runtime:
            container[k] = cfg[k]
    container.update(runtime)
    if container.get("loader") == "pipeline":
        raise ConfigError(f"model.{key}: a pipeline cannot be a stage of another pipeline")
    return container


def _stage_identity(scfg: dict[str, Any]) -> dict[str, Any]:
    """The stage's config with its name and revision filled in as its adapter would (``revision: auto``)."""
    from harness.models.registry import adapter_class

    resolve = getattr(adapter_class(str(scfg["loader"])), "resolve_identity", None)
    return dict(resolve(scfg)) if resolve else scfg


def ranked(run: Mapping[str, float]) -> list[str]:
    """Doc ids as pytrec_eval ranks them: by score, then by doc id, both descending."""
    return [d for d, _ in sorted(run.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def merge_rankings(
    first: Mapping[str, float], reranked: Mapping[str, float], depth: int, tail: str = "first_stage"
) -> dict[str, float]:
    """The pipeline's run for one query: ``reranked`` (stage two's scores of stage one's top ``depth``), then, with
    ``tail="first_stage"``, the rest of ``first`` in its own order, scored below the block."""
    order = ranked(first)
    block, rest = order[:depth], order[depth:]
    if set(reranked) != set(block):
        raise RuntimeError("second stage returned a different candidate set than the first stage's top depth")
    merged = {d: float(reranked[d]) for d in block}
    if tail == "first_stage" and rest:
        floor = (min(merged.values()) if merged else 0.0) - 1.0
        merged.update({d: floor - i for i, d in enumerate(rest)})
    return merged


class RerankPipeline(AdapterBase):
    """``conf/model/<first>+<second>.yaml``: ``first_stage``, ``second_stage``, ``depth`` (default 100), ``tail``."""

    adapter_version = "1"

    def __init__(self, cfg: Mapping[str, Any]):
        from harness.models.registry import build_adapter

        cfg = self.resolve_identity(cfg)
        super().__init__(cfg)
        self.depth = int(cfg["depth"])
        self.tail = str(cfg["tail"])
        self.stage_cfgs = {key: _stage_identity(stage_config(cfg, key)) for key in STAGES}
        self.first = build_adapter(self.stage_cfgs["first_stage"])
        self.second = build_adapter(self.stage_cfgs["second_stage"])
        self._check_roles()
        self._corpus: Any = None  # mteb's corpus (a datasets.Dataset): candidate texts are read from it on demand
        self._position: dict[str, int] = {}
        self._first_search: Any = None
        #: {task: {f"{split}.{subset}.{stage}": {"run", "tag", "depth"}}} until the run path takes them
        self._stage_runs: dict[str, dict[str, dict[str, Any]]] = {}
        self.stage_timings: dict[str, dict[str, float]] = {}

    @classmethod
    def resolve_identity(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Fill ``name: auto`` / ``revision: auto`` from the stages (reads their YAML only, loads no weights)."""
        cfg = dict(cfg)
        depth = cfg.get("depth", 100)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ConfigError(f"model.depth={depth!r}: expected a positive integer (documents reranked per query)")
        cfg["depth"] = depth
        cfg["tail"] = cfg.get("tail") or "first_stage"
        if cfg["tail"] not in TAILS:
            raise ConfigError(f"model.tail={cfg['tail']!r}: expected one of {TAILS}")
        stages = [_stage_identity(stage_config(cfg, key)) for key in STAGES]
        if cfg.get("name") in (None, "", "auto"):
            cfg["name"] = "+".join(str(s["name"]) for s in stages)
        if cfg.get("revision") in (None, "", "auto"):
            key = "|".join(f"{s['name']}@{s.get('revision')}" for s in stages) + f"|tail={cfg['tail']}"
            cfg["revision"] = f"depth{depth}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        return cfg

    def _check_roles(self) -> None:
        first_searches = callable(getattr(self.first, "search", None)) and callable(getattr(self.first, "index", None))
        if not first_searches and not callable(getattr(self.first, "encode", None)):
            raise ConfigError(
                f"model.first_stage ({self.first.name}): needs an embedder or a search model (index + search); "
                f"{type(self.first).__name__} is neither (a cross-encoder can only be a second stage)"
            )
        if not callable(getattr(self.second, "score_pairs", None)) and not callable(
            getattr(self.second, "encode_texts", None)
        ):
            raise ConfigError(
                f"model.second_stage ({self.second.name}): needs score_pairs (a reranker) or encode_texts "
                f"(an embedder); {type(self.second).__name__} has neither"
            )

    # -- what the run path records -----------------------------------------------------------------------
    def model_meta_fields(self) -> dict[str, Any]:
        types: list[str] = []
        n_params: list[int | None] = []
        for stage in (self.first, self.second):
            meta = stage.mteb_model_meta
            types += [t for t in (meta.model_type or []) if t not in types]
            n_params.append(meta.n_parameters)
        fields: dict[str, Any] = {
            "name": self.name,
            "revision": self.revision,
            "model_type": types or ["dense"],
            "n_parameters": sum(n_params) if all(n is not None for n in n_params) else None,  # type: ignore[misc]
            "adapted_from": self.first.name,
        }
        fields.update(dict(self.cfg.get("meta") or {}))
        return fields

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "depth": self.depth,
            "tail": self.tail,
            "first_stage": self.first.describe(),
            "second_stage": self.second.describe(),
            "second_stage_kind": "reranker" if hasattr(self.second, "score_pairs") else "embedder",
            "stage_timings_s": self.stage_timings,
        }

    def extra_runs(self, task_name: str) -> dict[str, dict[str, Any]]:
        """Each stage's run for ``task_name``, keyed ``<split>.<subset>.<stage>``, as ``{"run", "tag", "depth"}``
        (``depth``: how many documents per query the TREC file keeps). Returns them once, then forgets them."""
        return self._stage_runs.pop(task_name, {})

    # -- mteb's SearchProtocol ---------------------------------------------------------------------------
    def index(
        self,
        corpus: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        encode_kwargs: Mapping[str, Any] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> None:
        start = time.perf_counter()
        self._corpus = corpus
        ids = corpus["id"] if hasattr(corpus, "column_names") else [row["id"] for row in corpus]
        self._position = {str(doc_id): i for i, doc_id in enumerate(ids)}
        self._first_search = self._first_stage_searcher()
        self._first_search.index(
            corpus,
            task_metadata=task_metadata,
            hf_split=hf_split,
            hf_subset=hf_subset,
            encode_kwargs=self._encode_kwargs(self.first, encode_kwargs),
            num_proc=num_proc,
        )
        self._time(task_metadata.name, "first_stage_index", start)

    def _first_stage_searcher(self) -> Any:
        """The first stage as a SearchProtocol: itself (BM25), or the exact search `harness run` uses for an embedder
        (so stage one's run is what `harness run model=<first stage>` returns), or mteb's for a foreign embedder."""
        if callable(getattr(self.first, "search", None)) and callable(getattr(self.first, "index", None)):
            return self.first
        if isinstance(self.first, EmbeddingAdapter):
            from harness.engine.search import StreamingSearch

            return StreamingSearch(self.first)
        from harness.mteb_import import import_mteb

        import_mteb()
        from mteb.models.search_wrappers import SearchEncoderWrapper

        return SearchEncoderWrapper(self.first)

    @staticmethod
    def _encode_kwargs(stage: Any, encode_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        kwargs = dict(encode_kwargs or {})
        kwargs["batch_size"] = stage.batch_size  # each stage keeps its own batch size
        return kwargs

    def _time(self, task: str, phase: str, start: float) -> None:
        self.stage_timings.setdefault(task, {})[phase] = round(time.perf_counter() - start, 3)

    def search(
        self,
        queries: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        top_k: int,
        encode_kwargs: Mapping[str, Any] | None = None,
        top_ranked: Mapping[str, Sequence[str]] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, float]]:
        from harness.models.bm25 import query_texts

        task = task_metadata.name
        start = time.perf_counter()
        first_run = self._first_search.search(
            queries,
            task_metadata=task_metadata,
            hf_split=hf_split,
            hf_subset=hf_subset,
            top_k=max(int(top_k), self.depth),
            encode_kwargs=self._encode_kwargs(self.first, encode_kwargs),
            top_ranked=top_ranked,
            num_proc=num_proc,
        )
        self._time(task, "first_stage_search", start)
        qids, texts = query_texts(queries)
        query_text = dict(zip(qids, texts, strict=True))
        candidates = {qid: ranked(first_run.get(qid, {}))[: self.depth] for qid in qids}

        start = time.perf_counter()
        reranked = self.score_candidates(query_text, candidates, task=task, task_type=task_metadata.type)
        self._time(task, "second_stage", start)

        final = {}
        for qid in qids:
            merged = merge_rankings(first_run.get(qid, {}), reranked[qid], self.depth, self.tail)
            final[qid] = dict(sorted(merged.items(), key=lambda item: (item[1], item[0]), reverse=True)[: int(top_k)])
        runs = self._stage_runs.setdefault(task, {})
        runs[f"{hf_split}.{hf_subset}.first_stage"] = {
            "run": first_run, "tag": self.first.name, "depth": max(self.depth, 100)
        }
        runs[f"{hf_split}.{hf_subset}.second_stage"] = {"run": reranked, "tag": self.second.name, "depth": self.depth}
        for stage_name, stage in (("first_stage", self.first), ("second_stage", self.second)):
            for role, prefix in stage.prefixes_used.get(task, {}).items():
                self.prefixes_used.setdefault(task, {})[f"{stage_name}.{role}"] = prefix
        return final

    def candidate_texts(self, doc_ids: set[str]) -> dict[str, str]:
        """``{doc_id: title + " " + text}`` (mteb's join) of the candidates only, never the whole corpus."""
        from harness.models.bm25 import corpus_texts

        missing = sorted(d for d in doc_ids if d not in self._position)[:5]
        if missing:
            raise RuntimeError(f"first stage returned documents absent from the indexed corpus: {missing}")
        rows = sorted(self._position[d] for d in doc_ids)
        subset = self._corpus.select(rows) if hasattr(self._corpus, "select") else [self._corpus[r] for r in rows]
        ids, texts = corpus_texts(subset)
        return dict(zip(ids, texts, strict=True))

    def score_candidates(
        self,
        query_text: Mapping[str, str],
        candidates: Mapping[str, Sequence[str]],
        *,
        task: str | None = None,
        task_type: str | None = None,
    ) -> dict[str, dict[str, float]]:
        """Stage two's score of each (query, candidate): ``{qid: {doc_id: score}}`` over exactly ``candidates``."""
        texts = self.candidate_texts({d for docs in candidates.values() for d in docs})
        if callable(getattr(self.second, "score_pairs", None)):
            pairs = [(qid, d) for qid, docs in candidates.items() for d in docs]
            kwargs = {"task": task} if _accepts_task(self.second.score_pairs) else {}
            scores = self.second.score_pairs(
                [query_text[q] for q, _ in pairs], [texts[d] for _, d in pairs], **kwargs
            )
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
            if len(scores) != len(pairs):
                raise RuntimeError(
                    f"{self.second.name}.score_pairs returned {len(scores)} scores for {len(pairs)} pairs"
                )
            out: dict[str, dict[str, float]] = {qid: {} for qid in candidates}
            for (qid, d), s in zip(pairs, scores, strict=True):
                out[qid][d] = float(s)
            return out
        # an embedder as scorer: encode each distinct candidate once, never the whole corpus
        doc_ids = sorted(texts)
        position = {d: i for i, d in enumerate(doc_ids)}
        qids = list(candidates)
        encode = self.second.encode_texts
        q_emb = encode([query_text[q] for q in qids], role="query", task=task, task_type=task_type)
        d_emb = encode([texts[d] for d in doc_ids], role="document", task=task, task_type=task_type)
        out = {}
        for i, qid in enumerate(qids):
            docs = list(candidates[qid])
            if not docs:
                out[qid] = {}
                continue
            sims = self.second.similarity(q_emb[i : i + 1], d_emb[[position[d] for d in docs]])
            sims = np.asarray(sims.detach().cpu() if hasattr(sims, "detach") else sims, dtype=np.float64).reshape(-1)
            out[qid] = {d: float(s) for d, s in zip(docs, sims, strict=True)}
        return out


def _accepts_task(fn: Any) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "task" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
