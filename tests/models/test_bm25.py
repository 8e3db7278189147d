"""BM25 (harness/models/bm25.py): the analyzer's terms, scores against Lucene's BM25 formula computed by hand, the
SearchProtocol contract (what is returned, for which documents), and SciFact through `harness run model=bm25`
checked against an independent evaluation of the same index."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytrec_eval

from harness.errors import ConfigError
from harness.models.bm25 import BM25Search, LexicalAnalyzer, document_text, resolve_language, task_language
from harness.tasks.beir_local import load_beir_folder
from tests.conftest import SCIFACT, run_cli

BM25_CFG = {"name": "harness/bm25", "loader": "bm25"}


def task_meta(name: str = "Toy", langs: object = ("eng-Latn",)) -> SimpleNamespace:
    return SimpleNamespace(name=name, eval_langs=list(langs) if isinstance(langs, tuple) else langs, type="Retrieval")


# -- analyzer ------------------------------------------------------------------------------------------------
def test_english_terms_follow_lucene() -> None:
    terms = LexicalAnalyzer.from_settings("en").analyze("The runners were running in 2.5 hours, 1,000 of them.")
    # Lucene's 33 stopwords (the, in, of) go; Porter stems; decimal and grouped numbers stay whole
    assert terms == ["runner", "were", "run", "2.5", "hour", "1,000", "them"]


def test_combining_marks_stay_inside_words() -> None:
    hindi = "हिन्दी भाषा"
    assert len(re.findall(r"\w+", hindi)) > 2  # what a plain \w tokenizer does: cut at every vowel sign
    assert LexicalAnalyzer.from_settings(None).analyze(hindi) == ["हिन्दी", "भाषा"]


def test_unspaced_scripts_become_character_bigrams() -> None:
    analyzer = LexicalAnalyzer.from_settings("zh")
    assert analyzer.analyze("北京大学") == ["北京", "京大", "大学"]
    assert analyzer.analyze("在2009年 abc中文") == ["在", "2009", "年", "abc", "中文"]  # runs split at other scripts
    thai = "ภาษาไทย"
    assert LexicalAnalyzer.from_settings("th").analyze(thai) == [thai[i : i + 2] for i in range(len(thai) - 1)]
    assert LexicalAnalyzer.from_settings("zh", segment="unigram").analyze("北京") == ["北", "京"]
    assert LexicalAnalyzer.from_settings("zh", segment="unigram+bigram").analyze("北京") == ["北", "京", "北京"]


def test_language_picks_stemmer_and_stopwords() -> None:
    assert LexicalAnalyzer.from_settings("en").stemmer == "porter"
    assert LexicalAnalyzer.from_settings("hi").stemmer == "hindi"
    assert LexicalAnalyzer.from_settings("zh").stemmer is None
    assert LexicalAnalyzer.from_settings("de").analyze("die Häuser und Straßen") == ["haus", "strass"]
    assert LexicalAnalyzer.from_settings("en", stemmer="english").stemmer == "english"
    assert LexicalAnalyzer.from_settings("en", stopwords=None).analyze("the cat") == ["the", "cat"]
    assert LexicalAnalyzer.from_settings("en", stopwords=["cat"]).analyze("the cat") == ["the"]


def test_language_codes_resolve() -> None:
    for spec in ("en", "eng", "eng-Latn", "English"):
        assert resolve_language(spec) == "eng"
    assert resolve_language("arb-Arab") == "arb" and resolve_language(None) is None
    with pytest.raises(ConfigError, match="not known"):
        resolve_language("xx")
    assert task_language(["tha-Thai"], "default") == "tha"
    assert task_language({"zh": ["zho-Hans"], "de": ["deu-Latn"]}, "de") == "deu"
    assert task_language({"ara-deu": ["ara-Arab", "deu-Latn"]}, "ara-deu") is None  # cross-lingual: no stemming


def test_bad_settings_fail_at_load() -> None:
    with pytest.raises(ConfigError, match="stemmer"):
        BM25Search({**BM25_CFG, "stemmer": "klingon"})
    with pytest.raises(ConfigError, match="segment"):
        BM25Search({**BM25_CFG, "segment": "trigram"})
    with pytest.raises(ConfigError, match="stopwords"):
        BM25Search({**BM25_CFG, "stopwords": "xx"})
    with pytest.raises(ConfigError, match="method"):
        BM25Search({**BM25_CFG, "method": "tfidf"})


def test_revision_spells_the_settings() -> None:
    a = BM25Search.resolve_identity({**BM25_CFG, "revision": "auto"})["revision"]
    b = BM25Search.resolve_identity({**BM25_CFG, "revision": "auto", "k1": 1.2})["revision"]
    assert a != b and "k1_1.2" in b and "/" not in b
    assert BM25Search.resolve_identity({**BM25_CFG, "revision": "pinned"})["revision"] == "pinned"


# -- scores ----------------------------------------------------------------------------------------------------
DOCS = {
    "d1": ("Rain", "Rain falls from clouds when droplets grow heavy."),
    "d2": ("", "Snow is frozen rain; snow falls in winter."),
    "d3": ("Sun", "The sun heats the ground."),
    "d4": ("", "Clouds form when warm air rises and cools."),
}


def lucene_bm25(doc_terms: dict[str, list[str]], query: list[str], k1: float, b: float) -> dict[str, float]:
    """Lucene's BM25 (idf = ln(1 + (N - df + .5)/(df + .5)), tf part without the (k1 + 1) factor), by hand."""
    n = len(doc_terms)
    avgdl = sum(len(t) for t in doc_terms.values()) / n
    df = Counter(term for terms in doc_terms.values() for term in set(terms))
    scores = {}
    for doc, terms in doc_terms.items():
        tf = Counter(terms)
        score = 0.0
        for term in query:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] / (tf[term] + k1 * (1 - b + b * len(terms) / avgdl))
        scores[doc] = score
    return scores


@pytest.mark.parametrize(("k1", "b"), [(0.9, 0.4), (1.2, 0.75)])
def test_scores_equal_lucene_formula(k1: float, b: float) -> None:
    model = BM25Search({**BM25_CFG, "k1": k1, "b": b})
    analyzer = LexicalAnalyzer.from_settings("en")
    texts = [document_text(title, text) for title, text in DOCS.values()]
    model.build_index(list(DOCS), texts, analyzer)
    query = "why does rain fall from clouds"
    [run] = model.retrieve([query], top_k=10)
    expected = lucene_bm25(dict(zip(DOCS, analyzer.analyze_all(texts), strict=True)), analyzer.analyze(query), k1, b)
    assert set(run) == {d for d, s in expected.items() if s > 0}  # d3 shares no term: not returned
    for doc, score in run.items():
        assert score == pytest.approx(expected[doc], rel=1e-5)


def test_search_protocol_contract() -> None:
    from datasets import Dataset

    from harness.mteb_import import import_mteb

    import_mteb()
    from mteb.models.models_protocols import EncoderProtocol, SearchProtocol

    model = BM25Search({**BM25_CFG, "revision": "auto"})
    assert isinstance(model, SearchProtocol) and not isinstance(model, EncoderProtocol)
    corpus = Dataset.from_dict({"id": list(DOCS), "title": [t for t, _ in DOCS.values()],
                                "text": [x for _, x in DOCS.values()]})
    queries = Dataset.from_dict({"id": ["q1", "q2", "q3"], "text": ["rain clouds", "volcano lava", "snow"]})
    kw = {"task_metadata": task_meta(), "hf_split": "test", "hf_subset": "default", "encode_kwargs": {},
          "num_proc": None}
    model.index(corpus, **kw)
    run = model.search(queries, top_k=2, **kw)
    assert set(run) == {"q1", "q2", "q3"}
    assert len(run["q1"]) == 2 and run["q2"] == {}  # top_k respected; nothing shared, nothing returned
    assert set(run["q3"]) == {"d2"}
    reranked = model.search(queries, top_k=2, top_ranked={"q1": ["d3", "d4"], "q2": ["d1"], "q3": ["d2"]}, **kw)
    assert set(reranked["q1"]) == {"d3", "d4"} and reranked["q1"]["d3"] == 0.0  # exactly the candidates
    assert model.analyzers_used["Toy"]["default"]["stemmer"] == "porter"


# -- SciFact end to end ----------------------------------------------------------------------------------------
def test_scifact_bm25_through_harness_run(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run_cli("run", "model=bm25", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [folder] = list((out / "harness__bm25").iterdir())
    assert folder.name == BM25Search.resolve_identity({**BM25_CFG, "revision": "auto"})["revision"]
    entry = json.loads((folder / "SciFact.json").read_text())["scores"]["test"][0]

    # the same index, evaluated without mteb: the harness must not change a score
    data = load_beir_folder(SCIFACT)
    model = BM25Search(BM25_CFG)
    doc_ids = list(data.corpus)
    model.build_index(doc_ids, [document_text(d["title"], d["text"]) for d in data.corpus.values()],
                      LexicalAnalyzer.from_settings("eng-Latn"))
    q_ids = list(data.queries)
    run = dict(zip(q_ids, model.retrieve([data.queries[q] for q in q_ids], top_k=1000), strict=True))
    per_query = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    ndcg = round(float(np.mean([v["ndcg_cut_10"] for v in per_query.values()])), 5)
    assert entry["ndcg_at_10"] == ndcg
    assert entry["recall_at_100"] == round(float(np.mean([v["recall_100"] for v in per_query.values()])), 5)
    # published BM25 on SciFact: 66.5 (BEIR, multi-field) and 67.9 (pyserini flat); this index is flat
    assert 0.650 <= ndcg <= 0.695
