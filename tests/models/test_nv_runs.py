"""Each NVIDIA config runs end to end through ``harness run`` with a tiny random checkpoint in the original
format: NV-Embed-v2 on the bundled SciFact (5,183 documents), the others on a small BEIR folder. The result
file is mteb's, and the provenance records the instruction strings actually used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.models.bidirectional import load_tokenizer

SCIFACT_QUERY = (
    "Instruct: Given a scientific claim, retrieve documents that support or refute the claim\nQuery: "
)


def run(*args: str) -> None:
    assert main(["run", "device=cpu", "overwrite=true", *args]) == 0


def result(out: Path, model: str, revision: str, task: str) -> tuple[dict, dict]:
    folder = out / model.replace("/", "__") / revision
    scores = json.loads((folder / f"{task}.json").read_text())
    provenance = json.loads((folder / "harness" / f"{task}.provenance.json").read_text())
    assert (folder / "model_meta.json").is_file()
    return scores, provenance


def test_nv_embed_v2_on_scifact(tiny_checkpoints, tmp_path) -> None:
    out = tmp_path / "results"
    run(
        "model=nv-embed-v2",
        f"model.path={tiny_checkpoints['nv_embed']}",
        "model.max_length=64",
        "model.batch_size=64",
        "task=scifact",
        f"output_dir={out}",
    )
    scores, prov = result(out, "nvidia/NV-Embed-v2", "7604d305b621f14095a1aa23d351674c2859553a", "SciFact")
    entry = scores["scores"]["test"][0]
    assert scores["task_name"] == "SciFact" and 0.0 <= entry["ndcg_at_10"] <= 1.0
    assert prov["instructions_used"] == {"query": SCIFACT_QUERY, "document": ""}
    assert prov["model"]["adapter"] == "harness.models.nv_embed.NVEmbedAdapter"
    assert prov["model"]["attention"] == "bidirectional, key-padding mask only, no sliding window"


@pytest.mark.parametrize(
    ("model", "checkpoint", "name", "revision", "query_prefix", "document_prefix"),
    [
        (
            "nv-embed-v1",
            "nv_embed",
            "nvidia/NV-Embed-v1",
            "570834afd5fef5bf3a3c2311a2b6e0a66f6f4f2c",
            "Instruct: Given a question, retrieve passages that answer the question\nQuery: ",
            "",
        ),
        (
            "nv-retriever-v1",
            "nv_retriever",
            "nvidia/NV-Retriever-v1",
            "no_revision_available",
            "Given a web search query, retrieve relevant passages that answer the query: ",
            "passage: ",
        ),
        (
            "nv-embedqa-1b-v2",
            "llama_embed",
            "nvidia/llama-3.2-nv-embedqa-1b-v2",
            "no_revision_available",
            "query: ",
            "passage: ",
        ),
    ],
)
def test_config_runs_on_a_beir_folder(
    tiny_checkpoints, small_beir, tmp_path, model, checkpoint, name, revision, query_prefix, document_prefix
) -> None:
    out = tmp_path / "results"
    extra = []
    if model == "nv-retriever-v1":  # the tiny tokenizer's ':' is not Mistral's 28747
        colon = load_tokenizer(tiny_checkpoints[checkpoint]).convert_tokens_to_ids(":")
        extra.append(f"model.separator_token_id={colon}")
    run(
        f"model={model}",
        f"model.path={tiny_checkpoints[checkpoint]}",
        "task=beir_local",
        f"task.path={small_beir}",
        "task.name=TinyNVBeir",
        f"output_dir={out}",
        *extra,
    )
    scores, prov = result(out, name, revision, "TinyNVBeir")
    assert 0.0 <= scores["scores"]["test"][0]["ndcg_at_10"] <= 1.0
    assert prov["instructions_used"] == {"query": query_prefix, "document": document_prefix}
