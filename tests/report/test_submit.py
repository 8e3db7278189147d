"""`harness submit`: the submission loads back in mteb with the same scores; bad input writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from harness.report.submit import SubmissionError, write_submission

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REV = "8b3219a92973c328a8e22fadcfa821b5dc75636a"


def _our_run(mteb_results: Path, root: Path, model: str = MODEL, revision: str = REV) -> Path:
    """A results folder in our layout: MiniLM's SciFact result file, an NFCorpus result made with mteb's
    TaskResult API from a small set of scores, mteb's ModelMeta dump, and our harness/ sidecars."""
    import mteb
    from mteb.results import TaskResult

    rev = root / model.replace("/", "__") / revision
    (rev / "harness").mkdir(parents=True)
    shutil.copy(mteb_results / "sentence-transformers__all-MiniLM-L6-v2" / REV / "SciFact.json", rev)
    nf = TaskResult.from_task_results(
        mteb.get_task("NFCorpus"),
        {"test": {"default": {"ndcg_at_10": 0.31594, "recall_at_5": 0.11959, "main_score": 0.31594}}},
        evaluation_time=12.5,
    )
    nf.to_disk(rev / "NFCorpus.json")
    meta = mteb.get_model_meta(MODEL).to_dict()
    meta.update(name=model, revision=revision)
    (rev / "model_meta.json").write_text(json.dumps(meta, indent=4, default=str))
    (rev / "harness" / "SciFact.per_query.json").write_text("{}")
    return rev


def test_submission_loads_back_in_mteb_with_the_same_score(
    run_command, mteb_results: Path, tmp_path: Path
) -> None:
    import mteb
    from mteb.cache import ResultCache
    from mteb.results import TaskResult

    run = _our_run(mteb_results, tmp_path / "results")
    out = tmp_path / "submission"
    rc, printed = run_command("submit", run, "--out", out)
    assert rc == 0 and "2 task(s) written" in printed

    written = out / "results" / "sentence-transformers__all-MiniLM-L6-v2" / REV
    assert sorted(p.name for p in written.iterdir()) == ["NFCorpus.json", "SciFact.json", "model_meta.json"]
    again = TaskResult.from_disk(written / "SciFact.json")
    assert set(again.scores) == {"test", "train"}  # nothing dropped: the results repo refuses removed splits
    assert again.validate_and_filter_scores().get_score() == pytest.approx(0.64508, abs=1e-12)
    loaded = ResultCache(out).load_results(
        tasks=["SciFact", "NFCorpus"], validate_and_filter=True, include_remote=False
    )
    (model_result,) = [m for m in loaded if m.model_name == MODEL]
    assert model_result.model_revision == REV
    scores = {tr.task_name: tr.get_score() for tr in model_result.task_results}
    assert scores == {
        "SciFact": pytest.approx(0.64508, abs=1e-12),
        "NFCorpus": pytest.approx(0.31594, abs=1e-12),
    }
    assert json.loads((written / "model_meta.json").read_text())["name"] == MODEL

    text = (out / "model-index.yaml").read_text()
    card = yaml.safe_load(text.split("---\n")[1])
    assert card["tags"] == ["mteb"]
    (entry,) = card["model-index"]
    assert entry["name"] == "all-MiniLM-L6-v2"
    by_name = {r["dataset"]["name"]: r for r in entry["results"]}
    assert set(by_name) == {"MTEB SciFact", "MTEB NFCorpus"}
    sci = by_name["MTEB SciFact"]
    assert sci["task"] == {"type": "Retrieval"}
    assert sci["dataset"]["type"] == "mteb/scifact" and sci["dataset"]["split"] == "test"
    metrics = {m["type"]: m["value"] for m in sci["metrics"]}
    assert metrics["ndcg_at_10"] == pytest.approx(64.508) and metrics["main_score"] == pytest.approx(64.508)
    assert metrics["recall_at_5"] == pytest.approx(73.794)
    # the old SciFact file was run on an older dataset revision: said, not hidden
    assert "dataset_revision 0228b52c" in (out / "SUBMISSION.md").read_text()
    assert mteb.get_task("SciFact").metadata.revision in (out / "SUBMISSION.md").read_text()


def test_model_folder_is_accepted_and_existing_out_is_kept(mteb_results: Path, tmp_path: Path) -> None:
    run = _our_run(mteb_results, tmp_path / "results")
    out = tmp_path / "sub"
    write_submission(run.parent, out)  # the model folder, with its single revision
    with pytest.raises(SubmissionError, match="exists and is not empty"):
        write_submission(run, out)
    assert write_submission(run, out, force=True).scores["SciFact"] == pytest.approx(0.64508)


@pytest.mark.parametrize(
    "problem,match",
    [
        ("revision", "must be a 40-character"),
        ("split", "missing eval splits"),
        ("scale", "0-1 scale"),
        ("unregistered", "not in mteb's model registry"),
        ("name", "differs from the file name"),
    ],
)
def test_refused_submissions_write_nothing(
    mteb_results: Path, tmp_path: Path, problem: str, match: str
) -> None:
    model = "acme/not-a-registered-model" if problem == "unregistered" else MODEL
    revision = "main" if problem == "revision" else REV
    run = _our_run(mteb_results, tmp_path / "results", model=model, revision=revision)
    sci = json.loads((run / "SciFact.json").read_text())
    if problem == "split":
        sci["scores"]["dev"] = sci["scores"].pop("test")
    if problem == "scale":
        sci["scores"]["test"][0]["main_score"] = 64.508
    if problem == "name":
        (run / "SciFact.json").rename(run / "SciFact2.json")
    else:
        (run / "SciFact.json").write_text(json.dumps(sci))
    out = tmp_path / "out"
    with pytest.raises(SubmissionError, match=match):
        write_submission(run, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["results"]


def test_unregistered_model_with_flag(mteb_results: Path, tmp_path: Path) -> None:
    run = _our_run(mteb_results, tmp_path / "results", model="acme/not-a-registered-model")
    sub = write_submission(run, tmp_path / "out", allow_unregistered=True)
    assert sub.scores["NFCorpus"] == pytest.approx(0.31594)
    assert "not in mteb's model registry" in (tmp_path / "out" / "SUBMISSION.md").read_text()
