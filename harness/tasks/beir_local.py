"""Reading a BEIR-layout folder, with errors that name the file and line.

Layout: ``corpus.jsonl[.gz]`` (``{"_id", "title", "text"}``), ``queries.jsonl[.gz]`` (``{"_id", "text"}``),
``qrels/<split>.tsv`` (``query-id  corpus-id  score``, header optional; 4-column TREC qrels are accepted too).
Ids are strings. Only queries that appear in the split's qrels are kept (as BEIR and mteb do). Must not know mteb:
``mteb_task.py`` wraps the result.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.errors import DataFormatError


@dataclass
class BeirData:
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]  # id -> text, only ids with qrels
    qrels: dict[str, dict[str, int]]  # qid -> {doc id: relevance}
    files: dict[str, Path]


def find_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataFormatError(f"{folder}: no {stem}.jsonl or {stem}.jsonl.gz (BEIR layout expected)")


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line is an error naming file and line."""
    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(
                        f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                if not isinstance(obj, dict):
                    raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot be read ({exc})") from None


def _record_id(path: Path, lineno: int, obj: dict[str, Any]) -> str:
    raw = obj.get("_id", obj.get("id"))
    if raw is None or str(raw).strip() == "":
        raise DataFormatError(f'{path}:{lineno}: missing "_id"')
    return str(raw)


def read_corpus(path: Path, allow_empty_documents: bool = False) -> dict[str, dict[str, str]]:
    corpus: dict[str, dict[str, str]] = {}
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        doc_id = _record_id(path, lineno, obj)
        if doc_id in seen:
            raise DataFormatError(f"{path}:{lineno}: duplicate document id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        title, text = obj.get("title") or "", obj.get("text")
        if text is None:
            raise DataFormatError(f'{path}:{lineno}: document {doc_id!r} has no "text" field')
        if not isinstance(title, str) or not isinstance(text, str):
            raise DataFormatError(f"{path}:{lineno}: document {doc_id!r}: title and text must be strings")
        if not allow_empty_documents and not (title.strip() or text.strip()):
            raise DataFormatError(
                f"{path}:{lineno}: document {doc_id!r} has empty title and text "
                "(set task.allow_empty_documents=true to keep such documents)"
            )
        corpus[doc_id] = {"title": title, "text": text}
    if not corpus:
        raise DataFormatError(f"{path}: the corpus is empty")
    return corpus


def read_queries(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """All queries with their line numbers (errors about empty texts are raised only for evaluated queries)."""
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _record_id(path, lineno, obj)
        if qid in lines:
            raise DataFormatError(f"{path}:{lineno}: duplicate query id {qid!r} (first on line {lines[qid]})")
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataFormatError(f'{path}:{lineno}: query {qid!r} has no string "text" field')
        queries[qid], lines[qid] = text, lineno
    return queries, lines


def read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
    """qrels and, for error messages, the line of each (qid, doc id) pair."""
    qrels: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], int] = {}
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            if not fields or not line.strip():
                continue
            if lineno == 1 and fields[0].lower() in ("query-id", "query_id", "qid"):
                continue
            if len(fields) == 4:  # TREC qrels: qid iteration docid rel
                fields = [fields[0], fields[2], fields[3]]
            if len(fields) != 3:
                raise DataFormatError(
                    f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}"
                )
            qid, doc_id, score = fields
            try:
                rel = int(float(score))
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: score {score!r} is not a number") from None
            qrels.setdefault(qid, {})[doc_id] = rel
            where.setdefault((qid, doc_id), lineno)
    if not qrels:
        raise DataFormatError(f"{path}: no qrels rows")
    return qrels, where


def load_beir_folder(folder: str | Path, split: str = "test", allow_empty_documents: bool = False) -> BeirData:
    """Read and validate a BEIR folder for one split."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataFormatError(f"task.path={str(folder)!r} is not a folder")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DataFormatError(f"{qrels_path}: missing (splits available in {folder / 'qrels'}: {available or 'none'})")
    corpus_path, queries_path = find_file(folder, "corpus"), find_file(folder, "queries")

    corpus = read_corpus(corpus_path, allow_empty_documents)
    all_queries, query_lines = read_queries(queries_path)
    qrels, qrel_lines = read_qrels(qrels_path)

    unknown_q = [(q, d) for q in qrels for d in qrels[q] if q not in all_queries][:5]
    if unknown_q:
        cited = ", ".join(f"line {qrel_lines[p]}: {p[0]!r}" for p in unknown_q)
        raise DataFormatError(f"{qrels_path}: qrels cite queries absent from {queries_path.name}: {cited}")
    unknown_d = [(q, d) for q in qrels for d in qrels[q] if d not in corpus][:5]
    if unknown_d:
        cited = ", ".join(f"line {qrel_lines[p]}: {p[1]!r}" for p in unknown_d)
        raise DataFormatError(f"{qrels_path}: qrels cite documents absent from {corpus_path.name}: {cited}")

    queries = {qid: all_queries[qid] for qid in qrels}
    for qid, text in queries.items():
        if not text.strip():
            raise DataFormatError(f"{queries_path}:{query_lines[qid]}: query {qid!r} has an empty text")
    files = {"corpus": corpus_path, "queries": queries_path, "qrels": qrels_path}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels, files=files)
