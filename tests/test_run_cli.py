"""`harness run` end to end in a fresh interpreter: result files mteb loads, scores that an independent
numpy + pytrec_eval computation reproduces exactly, resume/overwrite, multirun, help, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from harness.models.hash_encoder import hash_embed
from harness.tasks.beir_local import load_beir_folder
from tests.conftest import SCIFACT, run_cli
from tests.tasks.test_beir_local import write_folder

HASH_DIR = "harness__hash-encoder/1"


@pytest.fixture(scope="module")
def hash_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "results"
    proc = run_cli("run", "model=hash-encoder", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def independent_scores(folder: Path, dim: int = 256) -> dict[str, float]:
    """Encode, score and rank without the harness or mteb: numpy and pytrec_eval only."""
    data = load_beir_folder(folder)
    doc_ids = list(data.corpus)
    docs = [(data.corpus[d]["title"] + " " + data.corpus[d]["text"]).strip() for d in doc_ids]
    d = np.stack([hash_embed(t, dim) for t in docs]).astype(np.float32)
    q_ids = list(data.queries)
    q = np.stack([hash_embed(data.queries[i], dim) for i in q_ids]).astype(np.float32)
    scores = q @ d.T
    run = {}
    for row, qid in enumerate(q_ids):
        top = np.argsort(-scores[row], kind="stable")[:1000]
        run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top}
    measures = {"ndcg_cut.10", "recall.5,100", "map_cut.100"}
    per_query = pytrec_eval.RelevanceEvaluator(data.qrels, measures).evaluate(run)
    mean = lambda m: round(float(np.mean([v[m] for v in per_query.values()])), 5)  # noqa: E731
    return {"ndcg_at_10": mean("ndcg_cut_10"), "recall_at_5": mean("recall_5"),
            "recall_at_100": mean("recall_100"), "map_at_100": mean("map_cut_100")}


def test_hash_run_equals_independent_computation(hash_run: tuple[Path, str]) -> None:
    out, _ = hash_run
    entry = json.loads((out / HASH_DIR / "SciFact.json").read_text())["scores"]["test"][0]
    expected = independent_scores(SCIFACT)
    assert {k: entry[k] for k in expected} == expected
    assert entry["main_score"] == entry["ndcg_at_10"]


def test_result_layout_loads_in_mteb(hash_run: tuple[Path, str]) -> None:
    import mteb

    out, stdout = hash_run
    folder = out / HASH_DIR
    assert {p.name for p in folder.iterdir()} == {"SciFact.json", "model_meta.json", "harness"}
    assert {p.name for p in (folder / "harness").iterdir()} == {
        "SciFact.provenance.json", "SciFact.per_query.json", "SciFact.test.default.run.trec.gz"
    }
    # output_dir is named results/, so its parent is an mteb cache root
    loaded = mteb.ResultCache(cache_path=out.parent).load_results(models=["harness/hash-encoder"], tasks=["SciFact"])
    [model_result] = loaded.model_results
    [task_result] = model_result.task_results
    file_score = json.loads((folder / "SciFact.json").read_text())["scores"]["test"][0]["ndcg_at_10"]
    assert task_result.get_score() == pytest.approx(file_score)
    # the printed table carries the same number
    assert f"{100 * file_score:.2f}" in stdout


def test_provenance_records_the_run(hash_run: tuple[Path, str]) -> None:
    out, _ = hash_run
    prov = json.loads((out / HASH_DIR / "harness" / "SciFact.provenance.json").read_text())
    assert prov["config"]["model"]["name"] == "harness/hash-encoder"
    assert prov["instructions_used"] == {"query": "", "document": ""}
    assert prov["versions"]["mteb"] and prov["versions"]["torch"]
    assert prov["data_files"]["corpus"]["sha256"] == "7062adb7fd2931f40c846cf0215f4b8ba877bac94dc3d334bb9c4d714fb6fc33"
    assert set(prov["timings_s"]) >= {"load_model", "load_data", "evaluate"}
    assert prov["checks"] == ["per-query means equal mteb's scores"]
    (search,) = prov["search"]  # one split searched by our streaming search: documents, rounds, candidates
    assert search["documents"] == 5183 and search["passes"] >= 1 and search["prefilter"] in ("amx", "bf16", "none")
    per_query = json.loads((out / HASH_DIR / "harness" / "SciFact.per_query.json").read_text())
    assert len(per_query["test"]["default"]["ndcg_at_10"]) == 300


def test_rerun_skips_unless_overwrite(hash_run: tuple[Path, str]) -> None:
    out, _ = hash_run
    result = out / HASH_DIR / "SciFact.json"
    before = result.stat().st_mtime_ns
    proc = run_cli("run", "model=hash-encoder", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cached" in proc.stdout and result.stat().st_mtime_ns == before
    proc = run_cli("run", "model=hash-encoder", f"output_dir={out}", "overwrite=true")
    assert proc.returncode == 0 and " new" in proc.stdout
    assert result.stat().st_mtime_ns != before


def test_damaged_result_is_recomputed(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data")
    out = tmp_path / "results"
    target = out / HASH_DIR / "Tiny.json"
    target.parent.mkdir(parents=True)
    target.write_text('{"task_name": "Tiny", "scores": ')  # a half-written file from a crash
    proc = run_cli("run", "model=hash-encoder", "task=beir_local", f"task.path={folder}", "task.name=Tiny",
                   f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(target.read_text())["task_name"] == "Tiny"


def test_unseen_beir_folder_gets_local_metadata(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data")
    out = tmp_path / "results"
    proc = run_cli("run", "model=hash-encoder", "task=beir_local", f"task.path={folder}", "task.name=MyTask",
                   f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / HASH_DIR / "MyTask.json").read_text())
    assert result["dataset_revision"] == "local"
    assert result["scores"]["test"][0]["ndcg_at_10"] == 1.0  # one query, its one relevant doc ranks first


def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data")
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "fine"}\n{"_id": oops}\n')
    out = tmp_path / "results"
    proc = run_cli("run", "model=hash-encoder", "task=beir_local", f"task.path={folder}", "task.name=Bad",
                   f"output_dir={out}")
    assert proc.returncode == 2
    assert f"{folder / 'corpus.jsonl'}:2: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "listed"),
    [("model=no-such-model", "all-minilm-l6-v2"), ("task=no-such-task", "beir_local")],
)
def test_unknown_model_or_task_lists_known_ones(override: str, listed: str) -> None:
    proc = run_cli("run", override)
    assert proc.returncode != 0
    assert "Could not find" in proc.stderr and listed in proc.stderr


def test_help_lists_config_groups() -> None:
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for group in ("model:", "task:", "benchmark:", "all-minilm-l6-v2", "beir_local", "scifact"):
        assert group in proc.stdout


def test_multirun_runs_each_combination(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "data")
    a, b = tmp_path / "a" / "results", tmp_path / "b" / "results"
    proc = run_cli("run", "-m", "model=hash-encoder", "task=beir_local", f"task.path={folder}", "task.name=Tiny",
                   f"output_dir={a},{b}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (a / HASH_DIR / "Tiny.json").is_file() and (b / HASH_DIR / "Tiny.json").is_file()
