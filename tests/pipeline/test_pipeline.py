"""Two-stage retrieval (harness/models/pipeline.py): the second stage only reorders the first stage's top `depth`,
its scores are the scorer's own, the tail keeps the first stage's order, identity and config errors, and
`harness run` end to end writing the result, both stages' runs and provenance, with the depth flag in the table."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.models.bm25 import BM25Search, LexicalAnalyzer, document_text
from harness.models.hash_encoder import hash_embed
from harness.models.pipeline import RerankPipeline, merge_rankings, ranked, stage_config
from harness.report.run_table import beyond_depth, print_run_table
from harness.tasks.beir_local import load_beir_folder
from tests.conftest import run_cli
from tests.pipeline.builders import build_random_cross_encoder, write_scifact_sample

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "llama_bidirec_tiny"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scifact_sample(tmp_path_factory.mktemp("data") / "scifact-sample")


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_cross_encoder(tmp_path_factory.mktemp("ce") / "random-ce", seed=0)


def read_trec(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            qid, _, doc, rank, score, _tag = line.split()
            run.setdefault(qid, []).append((doc, float(score)))
            assert int(rank) == len(run[qid])
    return run


def search_in_process(pipeline: RerankPipeline, folder: Path, top_k: int = 1000) -> dict[str, dict[str, float]]:
    """index + search as mteb calls them, with the registered SciFact metadata (English)."""
    from datasets import Dataset

    from harness.mteb_import import import_mteb

    meta = import_mteb().get_task("SciFact").metadata
    data = load_beir_folder(folder)
    ids = list(data.corpus)
    corpus = Dataset.from_dict({"id": ids, "title": [data.corpus[i]["title"] for i in ids],
                                "text": [data.corpus[i]["text"] for i in ids]})
    queries = Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())})
    kw = {"task_metadata": meta, "hf_split": "test", "hf_subset": "default", "encode_kwargs": {}, "num_proc": None}
    pipeline.index(corpus, **kw)
    return pipeline.search(queries, top_k=top_k, **kw)


def pipeline_cfg(second: dict | str, depth: int = 5, first: dict | str = "bm25", **extra: object) -> dict:
    return {"name": "auto", "revision": "auto", "loader": "pipeline", "first_stage": first,
            "second_stage": second, "depth": depth, **extra}


# -- the merge rule ----------------------------------------------------------------------------------------------
def test_merge_keeps_candidates_and_tail_order() -> None:
    rng = random.Random(0)
    for _ in range(50):
        n, depth = rng.randint(0, 30), rng.randint(1, 12)
        first = {f"d{i}": float(rng.choice([rng.random(), 0.5])) for i in range(n)}  # ties included
        block = ranked(first)[:depth]
        reranked = {d: rng.gauss(0, 3) for d in block}
        merged = merge_rankings(first, reranked, depth)
        assert set(merged) == set(first)
        order = ranked(merged)
        assert set(order[:depth]) == set(block)
        assert order[:len(block)] == ranked(reranked)
        assert order[depth:] == ranked(first)[depth:]
        assert set(merge_rankings(first, reranked, depth, tail="drop")) == set(block)
    with pytest.raises(RuntimeError, match="different candidate set"):
        merge_rankings({"a": 2.0, "b": 1.0}, {"b": 1.0}, 1)


# -- in process: the second stage reorders, nothing else ----------------------------------------------------------
def test_embedder_second_stage_only_reorders(sample: Path) -> None:
    depth = 5
    pipe = RerankPipeline(pipeline_cfg("hash-encoder", depth=depth))
    final = search_in_process(pipe, sample)
    stage_runs = pipe.extra_runs("SciFact")
    first = stage_runs["test.default.first_stage"]["run"]
    second = stage_runs["test.default.second_stage"]["run"]
    assert pipe.extra_runs("SciFact") == {}  # handed over once

    data = load_beir_folder(sample)
    bm25 = BM25Search({"name": "harness/bm25", "loader": "bm25"})
    bm25.build_index(list(data.corpus), [document_text(d["title"], d["text"]) for d in data.corpus.values()],
                     LexicalAnalyzer.from_settings("en"))
    expected_first = dict(zip(data.queries, bm25.retrieve(list(data.queries.values()), 1000), strict=True))
    assert first == expected_first  # stage one is plain BM25
    for qid, text in data.queries.items():
        block = ranked(first[qid])[:depth]
        assert set(final[qid]) == set(first[qid])  # no document added or dropped
        assert set(ranked(final[qid])[:depth]) == set(block) == set(second[qid])
        assert ranked(final[qid])[depth:] == ranked(first[qid])[depth:]
        q = hash_embed(text, 256)
        cosine = {d: float(hash_embed(document_text(data.corpus[d]["title"], data.corpus[d]["text"]), 256) @ q)
                  for d in block}
        for d in block:  # the block's scores are the scorer's own cosine similarities
            assert final[qid][d] == pytest.approx(cosine[d], abs=1e-5)
    assert pipe.describe()["depth"] == depth and pipe.describe()["second_stage_kind"] == "embedder"


def test_reranker_second_stage_only_reorders(sample: Path, ce_dir: Path) -> None:
    ce = {"loader": "cross_encoder", "name": "test/random-ce", "path": str(ce_dir)}
    pipe = RerankPipeline(pipeline_cfg(ce, depth=3, tail="drop"))
    final = search_in_process(pipe, sample)
    runs = pipe.extra_runs("SciFact")
    first, second = runs["test.default.first_stage"]["run"], runs["test.default.second_stage"]["run"]
    data = load_beir_folder(sample)
    qids = list(data.queries)
    for qid in qids:
        assert set(final[qid]) == set(ranked(first[qid])[:3]) == set(second[qid])  # tail dropped
    q0 = qids[0]
    docs = ranked(first[q0])[:3]
    direct = pipe.second.score_pairs([data.queries[q0]] * 3,
                                     [document_text(data.corpus[d]["title"], data.corpus[d]["text"]) for d in docs])
    assert [final[q0][d] for d in docs] == pytest.approx(direct.tolist(), rel=1e-5)


def test_embedder_first_stage_is_exact_search(sample: Path) -> None:
    pipe = RerankPipeline(pipeline_cfg("hash-encoder", depth=4, first="hash-encoder"))
    search_in_process(pipe, sample, top_k=10)
    first = pipe.extra_runs("SciFact")["test.default.first_stage"]["run"]
    data = load_beir_folder(sample)
    ids = list(data.corpus)
    d = np.stack([hash_embed(document_text(data.corpus[i]["title"], data.corpus[i]["text"]), 256) for i in ids])
    for qid, text in data.queries.items():
        scores = d @ hash_embed(text, 256)
        top = [ids[j] for j in np.argsort(-scores, kind="stable")[:10]]
        assert set(first[qid]) == set(top)


# -- identity and config errors ------------------------------------------------------------------------------------
def test_identity_names_both_stages_and_depth() -> None:
    cfg = RerankPipeline.resolve_identity(pipeline_cfg("all-minilm-l6-v2", depth=100))
    assert cfg["name"] == "harness/bm25+sentence-transformers/all-MiniLM-L6-v2"
    assert cfg["revision"].startswith("depth100-")
    assert RerankPipeline.resolve_identity(pipeline_cfg("all-minilm-l6-v2", depth=20))["revision"] != cfg["revision"]
    other_bm25 = pipeline_cfg("all-minilm-l6-v2", depth=100, first={"model": "bm25", "k1": 1.2})
    assert RerankPipeline.resolve_identity(other_bm25)["revision"] != cfg["revision"]
    kept = RerankPipeline.resolve_identity({**pipeline_cfg("hash-encoder"), "name": "org/mine", "revision": "r1"})
    assert (kept["name"], kept["revision"]) == ("org/mine", "r1")


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="depth"):
        RerankPipeline.resolve_identity(pipeline_cfg("hash-encoder", depth=0))
    with pytest.raises(ConfigError, match=r"model\.second_stage: .*hash-encoder\.yaml: no key 'colour'"):
        stage_config(pipeline_cfg({"model": "hash-encoder", "colour": "red"}), "second_stage")
    with pytest.raises(ConfigError, match=r"model\.second_stage is inline .* lacks 'loader'"):
        stage_config(pipeline_cfg({"name": "x/y"}), "second_stage")
    with pytest.raises(ConfigError, match="tail"):
        RerankPipeline.resolve_identity(pipeline_cfg("hash-encoder", tail="keep"))
    # null overrides keep the entry's value; runtime keys pass through; the pipeline's device reaches the stages
    scfg = stage_config({**pipeline_cfg({"model": "hash-encoder", "dim": None, "batch_size": 7}), "device": "cpu"},
                        "second_stage")
    assert (scfg["dim"], scfg["batch_size"], scfg["device"]) == (256, 7, "cpu")


def test_run_table_flags_metrics_beyond_depth(capsys: pytest.CaptureFixture[str]) -> None:
    assert beyond_depth("recall_at_100", 50) and beyond_depth("recall_at_100", 100)
    assert not beyond_depth("ndcg_at_10", 50) and not beyond_depth("ndcg_at_100", 100)
    assert beyond_depth("ndcg_at_1000", 100) and not beyond_depth("recall_at_100", None)
    outcome = type("O", (), {"task_name": "SciFact", "skipped": False,
                             "scores": {"test": [{"hf_subset": "default", "ndcg_at_10": 0.5, "recall_at_5": 0.5,
                                                  "recall_at_100": 0.9, "mrr_at_10": 0.4, "main_score": 0.5}]}})()
    print_run_table("a+b", [outcome], rerank_depth=50)
    out = capsys.readouterr().out
    assert "90.00†" in out and "50.00†" not in out and "rerank depth (50)" in out


# -- harness run, end to end -----------------------------------------------------------------------------------
def test_harness_run_bm25_then_cross_encoder(sample: Path, ce_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run_cli("run", "model=bm25+cross-encoder", f"model.second_stage.path={ce_dir}",
                   "model.second_stage.name=test/random-ce", "model.depth=5", "task=beir_local",
                   f"task.path={sample}", "task.name=SciFactSample", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R@100" in proc.stdout and "†" in proc.stdout and "rerank depth (5)" in proc.stdout
    [folder] = list((out / "harness__bm25+test__random-ce").iterdir())
    assert folder.name.startswith("depth5-")
    result = json.loads((folder / "SciFactSample.json").read_text())
    assert 0.0 <= result["scores"]["test"][0]["ndcg_at_10"] <= 1.0
    meta = json.loads((folder / "model_meta.json").read_text())
    assert (meta["name"], meta["revision"]) == ("harness/bm25+test/random-ce", folder.name)
    model = json.loads((folder / "harness" / "SciFactSample.provenance.json").read_text())["model"]
    assert model["depth"] == 5 and model["first_stage"]["name"] == "harness/bm25"
    assert model["second_stage"]["name"] == "test/random-ce" and model["second_stage"]["path"] == str(ce_dir)

    side = folder / "harness"
    first = read_trec(side / "SciFactSample.test.default.first_stage.run.trec.gz")
    second = read_trec(side / "SciFactSample.test.default.second_stage.run.trec.gz")
    final = read_trec(side / "SciFactSample.test.default.run.trec.gz")
    data = load_beir_folder(sample)
    assert set(first) == set(second) == set(final) == set(data.queries)
    for qid in data.queries:
        block = [d for d, _ in first[qid][:5]]
        assert {d for d, _ in second[qid]} == set(block)  # the reranker saw exactly stage one's top 5
        assert [d for d, _ in final[qid][:5]] == [d for d, _ in second[qid]]  # ... and its order is the result's
        assert [d for d, _ in final[qid][5:]] == [d for d, _ in first[qid][5:len(final[qid])]]
        assert {d for d, _ in final[qid]} == {d for d, _ in first[qid]}


def test_harness_run_tiny_llama_pipeline(sample: Path, tmp_path: Path) -> None:
    llama = pytest.importorskip("harness.models.llama_bidirec")
    if not (hasattr(llama, "LlamaEmbedAdapter") and hasattr(llama, "LlamaRerankAdapter")):
        pytest.skip("the llama_embed / llama_rerank adapters are not there yet")
    out = tmp_path / "results"
    proc = run_cli("run", "model=nv-embedqa-1b-v2+nv-rerankqa-1b-v2", f"model.first_stage.path={FIXTURES / 'embedder'}",
                   f"model.second_stage.path={FIXTURES / 'reranker'}", "model.depth=4", "device=cpu",
                   "task=beir_local", f"task.path={sample}", "task.name=SciFactSample", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [folder] = list((out / "nvidia__llama-3.2-nv-embedqa-1b-v2+nvidia__llama-3.2-nv-rerankqa-1b-v2").iterdir())
    assert (folder / "SciFactSample.json").is_file()
    side = folder / "harness"
    first = read_trec(side / "SciFactSample.test.default.first_stage.run.trec.gz")
    second = read_trec(side / "SciFactSample.test.default.second_stage.run.trec.gz")
    # the second stage's scores are the reranker's own logits for (query, candidate)
    from harness.models.registry import load_model

    reranker = load_model("nv-rerankqa-1b-v2", path=str(FIXTURES / "reranker"), device="cpu")
    data = load_beir_folder(sample)
    qid = next(iter(data.queries))
    assert {d for d, _ in second[qid]} == {d for d, _ in first[qid][:4]}
    docs = [d for d, _ in second[qid]]
    logits = reranker.score_pairs([data.queries[qid]] * len(docs),
                                  [document_text(data.corpus[d]["title"], data.corpus[d]["text"]) for d in docs])
    assert [s for _, s in second[qid]] == pytest.approx(logits.tolist(), rel=1e-5, abs=1e-5)
