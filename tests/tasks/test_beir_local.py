"""Reading BEIR folders: the bundled SciFact agrees with BEIR's own loader; bad input names file and line."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from harness.errors import DataFormatError
from harness.tasks.beir_local import load_beir_folder
from tests.conftest import SCIFACT


def write_folder(
    root: Path,
    corpus: list[str] | None = None,
    queries: list[str] | None = None,
    qrels: str = "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    split: str = "test",
) -> Path:
    corpus = corpus if corpus is not None else [
        json.dumps({"_id": "d1", "title": "Rain", "text": "Rain falls."}),
        json.dumps({"_id": "d2", "title": "", "text": "Snow is cold."}),
    ]
    queries = queries if queries is not None else [
        json.dumps({"_id": "q1", "text": "why does rain fall"}),
        json.dumps({"_id": "q2", "text": "not judged in this split"}),
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def test_bundled_scifact_matches_beir_loader(tmp_path: Path) -> None:
    from beir.datasets.data_loader import GenericDataLoader

    # BEIR's loader refuses .gz: give it the decompressed files
    for name in ("corpus.jsonl", "queries.jsonl"):
        with gzip.open(SCIFACT / f"{name}.gz", "rb") as src, (tmp_path / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    (tmp_path / "qrels").mkdir()
    shutil.copy(SCIFACT / "qrels" / "test.tsv", tmp_path / "qrels" / "test.tsv")
    corpus, queries, qrels = GenericDataLoader(data_folder=str(tmp_path)).load(split="test")

    ours = load_beir_folder(SCIFACT, "test")
    assert len(ours.corpus) == 5183 and len(ours.queries) == 300
    assert sum(len(d) for d in ours.qrels.values()) == 339
    assert ours.queries == queries
    assert ours.qrels == qrels
    assert {k: (v["title"], v["text"]) for k, v in ours.corpus.items()} == {
        k: (v.get("title", ""), v["text"]) for k, v in corpus.items()
    }


def test_only_judged_queries_are_kept_and_ids_are_strings(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "f",
        corpus=[json.dumps({"_id": 7, "title": "t", "text": "x"})],
        queries=[json.dumps({"_id": 1, "text": "q"}), json.dumps({"_id": 2, "text": "r"})],
        qrels="1\t7\t1\n",  # no header, integer-looking ids
    )
    data = load_beir_folder(folder)
    assert data.queries == {"1": "q"}
    assert data.qrels == {"1": {"7": 1}}
    assert list(data.corpus) == ["7"]


def test_trec_qrels_and_gzip_are_read(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f", qrels="q1 0 d1 2\n")
    with (folder / "corpus.jsonl").open("rb") as src, gzip.open(folder / "corpus.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (folder / "corpus.jsonl").unlink()
    data = load_beir_folder(folder)
    assert data.qrels == {"q1": {"d1": 2}}
    assert data.files["corpus"].name == "corpus.jsonl.gz"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: (f / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n'),
         r"corpus\.jsonl:2: malformed JSON"),
        (lambda f: (f / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n\n[1, 2]\n'),
         r"queries\.jsonl:3: expected a JSON object"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tnope\t1\n"),
         r"test\.tsv: qrels cite documents absent from corpus\.jsonl: line 2: 'nope'"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q9\td1\t1\n"),
         r"test\.tsv: qrels cite queries absent from queries\.jsonl: line 1: 'q9'"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q1\td1\n"), r"test\.tsv:1: expected 3 tab-separated"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q1\td1\thigh\n"), r"test\.tsv:1: score 'high'"),
        (lambda f: (f / "corpus.jsonl").write_text(""), r"corpus\.jsonl: the corpus is empty"),
        (lambda f: (f / "corpus.jsonl").unlink(), r"no corpus\.jsonl or corpus\.jsonl\.gz"),
        (lambda f: (f / "qrels" / "test.tsv").unlink(), r"test\.tsv: missing \(splits available"),
        (lambda f: (f / "queries.jsonl").write_text('{"_id": "q1", "text": "  "}\n'),
         r"queries\.jsonl:1: query 'q1' has an empty text"),
        (lambda f: (f / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": ""}\n'),
         r"corpus\.jsonl:1: document 'd1' has empty title and text"),
        (lambda f: (f / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'),
         r"corpus\.jsonl:2: duplicate document id 'd1' \(first on line 1\)"),
        (lambda f: (f / "corpus.jsonl").write_text('{"title": "no id", "text": "a"}\n'),
         r'corpus\.jsonl:1: missing "_id"'),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, mutate, message: str) -> None:
    folder = write_folder(tmp_path / "f")
    mutate(folder)
    with pytest.raises(DataFormatError, match=message):
        load_beir_folder(folder)


def test_empty_documents_can_be_allowed(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "f")
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": ""}\n')
    assert load_beir_folder(folder, allow_empty_documents=True).corpus == {"d1": {"title": "", "text": ""}}


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="is not a folder"):
        load_beir_folder(tmp_path / "missing")
