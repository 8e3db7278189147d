"""harness.results.load reads every format in the stored results (and ours) into the same record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.results.load import (
    ResultFileError,
    find_all,
    find_result_folders,
    iter_per_query_files,
    load_per_query,
    load_task_file,
    load_task_result,
)

MINILM_REV = "8b3219a92973c328a8e22fadcfa821b5dc75636a"


def test_taskresult_file(mteb_results: Path) -> None:
    tf = load_task_file(
        mteb_results / "sentence-transformers__all-MiniLM-L6-v2" / MINILM_REV / "SciFact.json"
    )
    assert (tf.kind, tf.task_name, tf.model, tf.revision) == (
        "mteb",
        "SciFact",
        "sentence-transformers/all-MiniLM-L6-v2",
        MINILM_REV,
    )
    entry = tf.entry("test", "default")
    assert entry is not None
    assert (entry["ndcg_at_10"], entry["recall_at_5"], entry["recall_at_100"]) == (0.64508, 0.73794, 0.925)


def test_pre_1_11_file_agrees_with_mteb_converter(mteb_results: Path) -> None:
    """Old format (`mteb_dataset_name`, nested `cos_sim: {spearman}`, subsets under the split)."""
    path = mteb_results / "sentence-transformers__all-MiniLM-L6-v2" / "no_revision_available" / "STS22.json"
    tf = load_task_file(path)
    assert tf.kind == "pre-1.11" and tf.task_name == "STS22"
    ours = tf.entry("test", "en")
    assert ours is not None and list(ours)[:2] == ["cos_sim_pearson", "cos_sim_spearman"]
    theirs = {e["hf_subset"]: e for e in load_task_result(path).scores["test"]}
    assert ours["cos_sim_spearman"] == theirs["en"]["cosine_spearman"] == pytest.approx(0.67214652, abs=1e-8)
    assert set(tf.scores["test"]) == set(theirs)
    # monolingual old files: metrics directly under the split become subset "default"
    sci = load_task_file(path.with_name("SciFact.json")).entry("test", "default")
    assert sci is not None and sci["ndcg_at_10"] == 0.64508 and "evaluation_time" not in sci


def test_external_card_file_drops_placeholders(mteb_results: Path) -> None:
    tf = load_task_file(mteb_results / "nvidia__NV-Embed-v1" / "external" / "MSMARCO.json")
    assert tf.kind == "external"
    assert tf.splits_with("default") == ["test"]  # the card's label for the dev score
    entry = tf.entry("test", "default")
    assert entry is not None and entry["ndcg_at_10"] == 0.46493
    assert "mrr_at_10" not in entry and "ndcg_at_100" not in entry  # 0.0 placeholders of the card


def test_folder_discovery_and_precedence(mteb_results: Path) -> None:
    folders = find_result_folders(mteb_results / "sentence-transformers__all-MiniLM-L6-v2")
    assert [f.revision for f in folders] == [MINILM_REV, "no_revision_available"]
    # no model_meta.json in the 2022 folder: the model name comes from the folder name
    assert {f.model for f in folders} == {"sentence-transformers/all-MiniLM-L6-v2"}
    bge = find_result_folders(mteb_results / "BAAI__bge-small-en-v1.5")
    assert [f.revision for f in bge][-1] == "external"
    root = find_all([mteb_results])
    assert len({f.model for f in root}) == 5 and len(root) == 9
    single = find_result_folders(mteb_results / "nvidia__NV-Embed-v1" / "external" / "ArguAna.json")
    assert (
        len(single) == 1 and list(single[0].files) == ["ArguAna"] and single[0].model == "nvidia/NV-Embed-v1"
    )


def test_our_layout_skips_sidecars(mteb_results: Path, tmp_path: Path) -> None:
    rev = tmp_path / "results" / "sentence-transformers__all-MiniLM-L6-v2" / MINILM_REV
    (rev / "harness").mkdir(parents=True)
    src = mteb_results / "sentence-transformers__all-MiniLM-L6-v2" / MINILM_REV
    shutil.copy(src / "SciFact.json", rev)
    shutil.copy(src / "model_meta.json", rev)
    (rev / "harness" / "SciFact.per_query.json").write_text(
        json.dumps({"test": {"default": {"ndcg_at_10": {"q": 1}}}})
    )
    (rev / "harness" / "SciFact.provenance.json").write_text("{}")
    (rev / "run_settings.jsonl").write_text("{}\n")
    # the project's results/ also holds reference numbers and regression files: not runs
    for other in ("published", "expected", ".cache"):
        (tmp_path / "results" / other).mkdir()
        (tmp_path / "results" / other / "mteb-eng-v1.json").write_text("{}")
    folders = find_all([tmp_path / "results"])
    assert len(folders) == 1 and list(folders[0].files) == ["SciFact"]
    assert dict(iter_per_query_files(rev)) == {"SciFact": rev / "harness" / "SciFact.per_query.json"}
    assert load_per_query(rev / "harness" / "SciFact.per_query.json")["test"]["default"]["ndcg_at_10"] == {
        "q": 1
    }


def test_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "Bad.json"
    bad.write_text(json.dumps({"task_name": "Bad", "scores": {"test": [{"main_score": 1.0}]}}))
    with pytest.raises(ResultFileError, match=r"Bad\.json: key 'mteb_version' missing"):
        load_task_file(bad)
    bad.write_text(
        json.dumps({"task_name": "Bad", "mteb_version": None, "scores": {"test": [{"main_score": 1}]}})
    )
    with pytest.raises(ResultFileError, match=r"Bad\.json: scores\.test\[0\]\.hf_subset"):
        load_task_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ResultFileError, match=r"Bad\.json: not valid JSON"):
        load_task_file(bad)
    pq = tmp_path / "X.per_query.json"
    pq.write_text(json.dumps({"test": {"default": {"ndcg_at_10": [0.5]}}}))
    with pytest.raises(ResultFileError, match=r"key 'test\.default\.ndcg_at_10'"):
        load_per_query(pq)
