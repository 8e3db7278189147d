"""Fixtures for the engine tests: a tiny BEIR folder cut from the bundled SciFact, and one uninterrupted
single-process run on it (the reference the killed, torchrun and submitit runs must equal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.tasks.beir_local import load_beir_folder
from tests.conftest import SCIFACT, run_cli

TASK = "TinyFact"
HASH_DIR = "harness__hash-encoder/1"
SHARD_ROWS = 16  # 72 documents: 5 shards, so a run can die between shards and two ranks share the work


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 SciFact test queries, their relevant documents and 60 others (72 documents)."""
    data = load_beir_folder(SCIFACT)
    qids = sorted(data.qrels)[:12]
    relevant = sorted({d for q in qids for d in data.qrels[q]})
    others = [d for d in data.corpus if d not in relevant][: 72 - len(relevant)]
    root = tmp_path_factory.mktemp("tinyfact")
    with (root / "corpus.jsonl").open("w") as handle:
        for doc in relevant + others:
            handle.write(json.dumps({"_id": doc, **data.corpus[doc]}) + "\n")
    with (root / "queries.jsonl").open("w") as handle:
        for qid in qids:
            handle.write(json.dumps({"_id": qid, "text": data.queries[qid]}) + "\n")
    (root / "qrels").mkdir()
    rows = [f"{q}\t{d}\t{r}" for q in qids for d, r in data.qrels[q].items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def run_args(tiny: Path, out: Path, cache: Path | str, *extra: str, name: str = TASK) -> list[str]:
    return [
        "run", "model=hash-encoder", "task=beir_local", f"task.path={tiny}", f"task.name={name}",
        f"output_dir={out}", f"cache_dir={cache}", f"cache.shard_rows={SHARD_ROWS}", "device=cpu", *extra,
    ]


def scores_of(out: Path, name: str = TASK) -> dict[str, float]:
    entry = json.loads((out / HASH_DIR / f"{name}.json").read_text())["scores"]["test"][0]
    return {k: v for k, v in entry.items() if isinstance(v, float)}


@pytest.fixture(scope="session")
def reference_scores(tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    root = tmp_path_factory.mktemp("reference")
    proc = run_cli(*run_args(tiny_beir, root / "results", root / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = scores_of(root / "results")
    assert scores["ndcg_at_10"] > 0.2  # a real ranking, so equality below means something
    return scores
