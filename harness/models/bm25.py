"""BM25 on ``bm25s`` as an mteb SearchProtocol (``index`` + ``search``), with a language-aware analyzer.

Owns: how a text becomes terms (``LexicalAnalyzer``: NFKC, lower case, number/word/segment tokens, stopwords,
PyStemmer stemming), which analyzer a task gets (``language: auto`` reads the task's languages per subset), the
bm25s index of the current corpus, and the run ``search`` returns. Must not import mteb (the protocol is met
structurally; the corpus and queries arrive as ``datasets.Dataset``-like column tables) and must not know where
results go.

Choices, measured on SciFact and XQuAD (docs/benchmarks.md):
* One field, ``title + " " + text`` (mteb's join): pyserini's *flat* BEIR index, not BEIR's multi-field one.
* Lucene-like defaults (k1 0.9, b 0.4, Lucene's BM25 idf, its 33 English stopwords, the original Porter stemmer
  for English, single-character terms kept, ``1,000`` / ``2.5`` kept whole as Lucene's StandardTokenizer does).
* Scripts written without spaces (Han, kana, Hangul, Thai, Lao, Khmer, Myanmar, Tibetan) become overlapping
  character bigrams (Lucene's CJK approach): no dictionary segmenter is installed, a run of such characters is one
  ``\\w+`` match (a whole sentence), and single characters are too common to discriminate. This is by script, so it
  works whatever language the task declares.
* Combining marks (Devanagari vowel signs, Thai tone marks, Arabic harakat) stay inside words; Python's ``\\w``
  alone would cut Hindi words at every vowel sign.
* Only documents sharing a term with the query are returned (as Lucene does); a query matching nothing gets an
  empty run and scores 0 (pytrec_eval still counts it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.models.base import AdapterBase

#: ISO 639-3 → (PyStemmer algorithm or None, bm25s stopword list key or None). English uses the original Porter
#: stemmer, as Lucene's EnglishAnalyzer (hence pyserini) does; "english" (Porter2) is one config key away.
LANGUAGES: dict[str, tuple[str | None, str | None]] = {
    "eng": ("porter", "en"),
    "deu": ("german", "de"),
    "nld": ("dutch", "nl"),
    "fra": ("french", "fr"),
    "spa": ("spanish", "es"),
    "por": ("portuguese", "pt"),
    "ita": ("italian", "it"),
    "rus": ("russian", "ru"),
    "swe": ("swedish", "sv"),
    "nor": ("norwegian", "no"),
    "nob": ("norwegian", "no"),
    "nno": ("norwegian", "no"),
    "dan": ("danish", "da"),
    "tur": ("turkish", "tr"),
    "ara": ("arabic", None),
    "arb": ("arabic", None),
    "ell": ("greek", None),
    "hin": ("hindi", None),
    "ron": ("romanian", None),
    "fin": ("finnish", None),
    "hun": ("hungarian", None),
    "ind": ("indonesian", None),
    "cat": ("catalan", None),
    "eus": ("basque", None),
    "ces": ("czech", None),
    "pol": ("polish", None),
    "fas": ("persian", None),
    "pes": ("persian", None),
    "tam": ("tamil", None),
    "nep": ("nepali", None),
    "lit": ("lithuanian", None),
    "est": ("estonian", None),
    "hye": ("armenian", None),
    "gle": ("irish", None),
    "srp": ("serbian", None),
    "yid": ("yiddish", None),
    # no stemmer: Vietnamese (isolating), and the segmented scripts (bigrams carry no inflection to strip)
    "vie": (None, None),
    "zho": (None, None),
    "cmn": (None, None),
    "jpn": (None, None),
    "kor": (None, None),
    "tha": (None, None),
}

#: ISO 639-1 codes and English names people type in configs → ISO 639-3
ALIASES: dict[str, str] = {
    "en": "eng", "english": "eng", "de": "deu", "german": "deu", "nl": "nld", "dutch": "nld", "fr": "fra",
    "french": "fra", "es": "spa", "spanish": "spa", "pt": "por", "portuguese": "por", "it": "ita",
    "italian": "ita", "ru": "rus", "russian": "rus", "sv": "swe", "swedish": "swe", "no": "nor",
    "norwegian": "nor", "da": "dan", "danish": "dan", "tr": "tur", "turkish": "tur", "ar": "ara",
    "arabic": "ara", "el": "ell", "greek": "ell", "hi": "hin", "hindi": "hin", "ro": "ron", "romanian": "ron",
    "fi": "fin", "finnish": "fin", "hu": "hun", "hungarian": "hun", "id": "ind", "indonesian": "ind",
    "ca": "cat", "catalan": "cat", "eu": "eus", "basque": "eus", "cs": "ces", "czech": "ces", "pl": "pol",
    "polish": "pol", "fa": "fas", "persian": "fas", "ta": "tam", "tamil": "tam", "ne": "nep", "nepali": "nep",
    "lt": "lit", "lithuanian": "lit", "et": "est", "estonian": "est", "hy": "hye", "armenian": "hye",
    "ga": "gle", "irish": "gle", "sr": "srp", "serbian": "srp", "yi": "yid", "yiddish": "yid",
    "vi": "vie", "vietnamese": "vie", "zh": "zho", "chinese": "zho", "ja": "jpn", "japanese": "jpn",
    "ko": "kor", "korean": "kor", "th": "tha", "thai": "tha",
}

#: scripts written without spaces between words: cut into character n-grams
SEGMENTED_RANGES = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # Hangul jamo, compatibility jamo, syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0002fa1f"  # CJK extensions B-F, compatibility supplement
)
SEGMENT_MODES = ("bigram", "unigram", "unigram+bigram")
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@functools.lru_cache(maxsize=1)
def _mark_class() -> str:
    """A regex class body of every combining mark (Mn, Mc, Me), so words keep their vowel signs and diacritics."""
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp))[0] == "M":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)


@functools.lru_cache(maxsize=1)
def _token_regex() -> re.Pattern[str]:
    seg = f"[{SEGMENTED_RANGES}]"
    word_char = f"(?:[^\\W_]|[{_mark_class()}])"
    return re.compile(
        rf"(?P<num>\d+(?:[.,]\d+)+)"  # 1,000 and 2.5 stay whole (Lucene's StandardTokenizer)
        rf"|(?P<seg>{seg}+)"
        rf"|(?P<word>(?:(?!{seg}){word_char})+)"
    )


def resolve_language(spec: str | None) -> str | None:
    """``en`` / ``eng`` / ``eng-Latn`` / ``english`` → ``eng``; None for no language."""
    if spec is None or str(spec).strip().lower() in ("", "none", "null"):
        return None
    code = str(spec).strip().lower().split("-")[0].split("_")[0]
    code = ALIASES.get(code, code)
    if code not in LANGUAGES:
        known = ", ".join(sorted(LANGUAGES))
        raise ConfigError(f"model.language={spec!r} is not known to the BM25 analyzer. Known (ISO 639-3): {known}")
    return code


def task_language(eval_langs: Sequence[str] | Mapping[str, Sequence[str]] | None, hf_subset: str) -> str | None:
    """The one language of a task subset (mteb ``eval_langs``), or None when it has several or none."""
    langs = list(eval_langs.get(hf_subset) or []) if isinstance(eval_langs, Mapping) else list(eval_langs or [])
    codes = {str(lang).split("-")[0].lower() for lang in langs}
    codes = {ALIASES.get(c, c) for c in codes}
    if len(codes) != 1:
        return None
    code = next(iter(codes))
    return code if code in LANGUAGES else None


#: bm25s's stopword lists (``bm25s.stopwords``) by the keys its own ``tokenize`` accepts
STOPWORD_LISTS = {
    "en": "STOPWORDS_EN", "en_plus": "STOPWORDS_EN_PLUS", "de": "STOPWORDS_GERMAN", "nl": "STOPWORDS_DUTCH",
    "fr": "STOPWORDS_FRENCH", "es": "STOPWORDS_SPANISH", "pt": "STOPWORDS_PORTUGUESE", "it": "STOPWORDS_ITALIAN",
    "ru": "STOPWORDS_RUSSIAN", "sv": "STOPWORDS_SWEDISH", "no": "STOPWORDS_NORWEGIAN", "zh": "STOPWORDS_CHINESE",
    "tr": "STOPWORDS_TURKISH", "ko": "STOPWORDS_KOREAN", "da": "STOPWORDS_DANISH",
}


def _stopword_list(key: str) -> list[str]:
    if key not in STOPWORD_LISTS:
        raise ConfigError(
            f"model.stopwords={key!r}: expected auto, null, a list of words or one of {sorted(STOPWORD_LISTS)}"
        )
    from bm25s import stopwords

    return list(getattr(stopwords, STOPWORD_LISTS[key]))


@dataclass
class LexicalAnalyzer:
    """Text → terms. ``stemmer``: a PyStemmer algorithm or None; ``stopwords``: a collection of lower-cased words
    (applied before stemming, to word tokens only); ``segment``: how segmented-script runs are cut."""

    language: str | None = "eng"
    stemmer: str | None = "porter"
    stopwords: frozenset[str] = frozenset()
    segment: str = "bigram"

    def __post_init__(self) -> None:
        if self.segment not in SEGMENT_MODES:
            raise ConfigError(f"model.segment={self.segment!r}: expected one of {SEGMENT_MODES}")
        self._stem_word = None
        if self.stemmer:
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise ConfigError(
                    f"model.stemmer={self.stemmer!r} is not a PyStemmer algorithm: {', '.join(Stemmer.algorithms())}"
                )
            self._stem_word = Stemmer.Stemmer(self.stemmer).stemWord
        self._stems: dict[str, str] = {}
        self._regex = _token_regex()

    @classmethod
    def from_settings(
        cls, language: str | None, stemmer: str | None = "auto", stopwords: Any = "auto", segment: str = "bigram"
    ) -> LexicalAnalyzer:
        """``language``: an ISO code (resolved already or not); ``stemmer`` / ``stopwords``: ``auto`` (by language),
        None, a PyStemmer algorithm / a bm25s list key (``en``, ``de``...) or a list of words."""
        lang = resolve_language(language)
        auto_stemmer, auto_stop = LANGUAGES.get(lang, (None, None)) if lang else (None, None)
        stem = auto_stemmer if stemmer == "auto" else (stemmer or None)
        if stopwords == "auto":
            words: Iterable[str] = _stopword_list(auto_stop) if auto_stop else []
        elif stopwords in (None, False, "none"):
            words = []
        elif isinstance(stopwords, str):
            words = _stopword_list(stopwords)
        else:
            words = [str(w) for w in stopwords]
        return cls(lang, stem, frozenset(w.lower() for w in words), segment)

    def describe(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "stemmer": self.stemmer,
            "stopwords": len(self.stopwords),
            "segment": self.segment,
        }

    def _stem(self, word: str) -> str:
        stem = self._stems.get(word)
        if stem is None:
            stem = self._stems[word] = self._stem_word(word) if self._stem_word else word
        return stem

    def _ngrams(self, run: str) -> list[str]:
        if len(run) == 1 or self.segment == "unigram":
            return list(run)
        bigrams = [run[i : i + 2] for i in range(len(run) - 1)]
        return list(run) + bigrams if self.segment == "unigram+bigram" else bigrams

    def analyze(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        terms: list[str] = []
        for match in self._regex.finditer(text):
            kind = match.lastgroup
            token = match.group()
            if kind == "seg":
                terms.extend(self._ngrams(token))
            elif kind == "num":
                terms.append(token)
            elif token not in self.stopwords:
                terms.append(self._stem(token))
        return terms

    def analyze_all(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.analyze(text) for text in texts]


def document_text(title: str | None, text: str) -> str:
    """mteb's join of a corpus row (``_corpus_to_dict``): ``(title + " " + text).strip()``, or the text alone."""
    return (title + " " + text).strip() if title else text.strip()


def corpus_texts(corpus: Any) -> tuple[list[str], list[str]]:
    """(ids, texts) of an mteb corpus (a ``datasets.Dataset`` or a list of ``{"id", "title", "text"}`` rows)."""
    if hasattr(corpus, "column_names"):
        ids = [str(i) for i in corpus["id"]]
        titles = corpus["title"] if "title" in corpus.column_names else [None] * len(ids)
        return ids, [document_text(t, x) for t, x in zip(titles, corpus["text"], strict=True)]
    rows = list(corpus)
    return [str(r["id"]) for r in rows], [document_text(r.get("title"), r["text"]) for r in rows]


def query_texts(queries: Any) -> tuple[list[str], list[str]]:
    """(ids, texts) of mteb queries; an ``instruction`` column is appended as mteb does for encoders."""
    if hasattr(queries, "column_names"):
        ids, texts = [str(i) for i in queries["id"]], list(queries["text"])
        instructions = queries["instruction"] if "instruction" in queries.column_names else [None] * len(ids)
    else:
        rows = list(queries)
        ids, texts = [str(r["id"]) for r in rows], [r["text"] for r in rows]
        instructions = [r.get("instruction") for r in rows]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"query {ids[i]!r}: BM25 reads text queries only (got {type(text).__name__})")
    return ids, [t + " " + ins if ins else t for t, ins in zip(texts, instructions, strict=True)]


class BM25Search(AdapterBase):
    """``conf/model/bm25.yaml``: k1, b, method, language (``auto``: per task subset), stemmer, stopwords, segment."""

    def __init__(self, cfg: Mapping[str, Any]):
        cfg = self.resolve_identity(cfg)
        super().__init__(cfg)
        self.k1 = float(cfg.get("k1", 0.9))
        self.b = float(cfg.get("b", 0.4))
        self.method = str(cfg.get("method", "lucene"))
        if self.method not in METHODS:
            raise ConfigError(f"model.method={self.method!r}: expected one of {METHODS}")
        self.language = cfg.get("language", "auto")
        self.stemmer = cfg.get("stemmer", "auto")
        self.stopwords = cfg.get("stopwords", "auto")
        self.segment = str(cfg.get("segment", "bigram"))
        if self.language != "auto":
            resolve_language(self.language)
        # check stemmer, stopwords and segment now, not after the data is read
        LexicalAnalyzer.from_settings(
            None,
            None if self.stemmer == "auto" else self.stemmer,
            None if self.stopwords == "auto" else self.stopwords,
            self.segment,
        )
        self._index: tuple[LexicalAnalyzer, Any, list[str]] | None = None
        #: {task: {subset: analyzer settings}}: what each task was indexed with, for provenance
        self.analyzers_used: dict[str, dict[str, dict[str, Any]]] = {}

    @classmethod
    def resolve_identity(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """``revision: auto`` → the scoring parameters, so a changed setting never reuses an old results folder."""
        cfg = dict(cfg)
        if cfg.get("revision") in (None, "auto"):
            stop = cfg.get("stopwords", "auto")
            if isinstance(stop, (list, tuple)):
                stop = "list" + hashlib.sha256("\n".join(map(str, stop)).encode()).hexdigest()[:8]
            parts = [
                f"k1_{cfg.get('k1', 0.9)}", f"b_{cfg.get('b', 0.4)}", str(cfg.get("method", "lucene")),
                f"lang_{cfg.get('language', 'auto')}", f"stem_{cfg.get('stemmer', 'auto')}", f"stop_{stop}",
                str(cfg.get("segment", "bigram")),
            ]
            cfg["revision"] = "-".join(parts).replace("/", "_")
        return cfg

    def model_meta_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": self.name,
            "revision": self.revision,
            "model_type": ["sparse"],
            "n_parameters": 0,
            "open_weights": True,
            "use_instructions": False,
            "reference": "https://github.com/xhluca/bm25s",
        }
        fields.update(dict(self.cfg.get("meta") or {}))
        return fields

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "language": self.language,
            "stemmer": self.stemmer,
            "stopwords": self.stopwords,
            "segment": self.segment,
            "fields": "title + ' ' + text (one field)",
            "analyzers_used": self.analyzers_used,
        }

    def analyzer_for(self, task_name: str, eval_langs: Any, hf_subset: str) -> LexicalAnalyzer:
        language = task_language(eval_langs, hf_subset) if self.language == "auto" else self.language
        analyzer = LexicalAnalyzer.from_settings(language, self.stemmer, self.stopwords, self.segment)
        self.analyzers_used.setdefault(task_name, {})[hf_subset] = analyzer.describe()
        return analyzer

    # -- the index, usable without mteb ------------------------------------------------------------------
    def build_index(self, doc_ids: Sequence[str], texts: Sequence[str], analyzer: LexicalAnalyzer) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its logger to DEBUG on import
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index(analyzer.analyze_all(texts), show_progress=False)
        self._index = (analyzer, retriever, list(doc_ids))

    def retrieve(
        self, texts: Sequence[str], top_k: int, candidates: Sequence[Sequence[str] | None] | None = None
    ) -> list[dict[str, float]]:
        """Per query text: ``{doc_id: score}`` of the top ``top_k`` documents sharing a term with it; when
        ``candidates[i]`` is given, exactly those documents (zero scores included), as a reranking task needs."""
        if self._index is None:
            raise RuntimeError("BM25Search.retrieve before index(): no corpus indexed")
        analyzer, retriever, doc_ids = self._index
        tokens = analyzer.analyze_all(texts)
        out: list[dict[str, float]] = []
        if candidates is None:
            k = min(int(top_k), len(doc_ids))
            docs, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
            for row_docs, row_scores in zip(docs, scores, strict=True):
                out.append({doc_ids[j]: float(s) for j, s in zip(row_docs, row_scores, strict=True) if s > 0})
            return out
        position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
        for query_tokens, cands in zip(tokens, candidates, strict=True):
            scores = retriever.get_scores(query_tokens) if query_tokens else np.zeros(len(doc_ids))
            if cands is None:
                order = np.argsort(-scores, kind="stable")[: int(top_k)]
                out.append({doc_ids[j]: float(scores[j]) for j in order if scores[j] > 0})
            else:
                out.append({d: float(scores[position[d]]) for d in cands if d in position})
        return out

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
        ids, texts = corpus_texts(corpus)
        self.build_index(ids, texts, self.analyzer_for(task_metadata.name, task_metadata.eval_langs, hf_subset))

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
        qids, texts = query_texts(queries)
        candidates = [top_ranked.get(q) for q in qids] if top_ranked is not None else None
        return dict(zip(qids, self.retrieve(texts, top_k, candidates), strict=True))
