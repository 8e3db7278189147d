"""The NVIDIA instruction files: NVIDIA's own strings verbatim where they exist (checked against the stored
reference tables), the documented side for each, and an explicit CQADupStack choice."""

from __future__ import annotations

import json

import pytest

from harness.models.instructions import InstructionTable
from tests.models.conftest import SHARED

REFERENCE = SHARED / "reference" / "instructions"
NV_FILE = SHARED / "reference" / "model-cards" / "nvidia__NV-Embed-v2" / "instructions.json"
CQA = ["CQADupstackAndroidRetrieval", "CQADupstackWordpressRetrieval", "CQADupstackGisRetrieval"]
E5_CQA = (
    "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the "
    "given question"
)


@pytest.mark.parametrize("family", ["nv_embed_v2", "nv_embed_v1"])
def test_nv_embed_retrieval_strings_are_nvidias(family: str) -> None:
    table = InstructionTable.load(family)
    nvidia = json.loads(NV_FILE.read_text())
    for task, entry in nvidia.items():
        if "query" in entry:
            assert table.instruction("query", task, "Retrieval") == entry["query"], task
            assert (table.instruction("document", task, "Retrieval") or "") == entry["corpus"], task
    sts, summ = nvidia["STS"]["text"], nvidia["SUMM"]["text"]
    for role in ("query", "document"):
        assert table.instruction(role, "STSBenchmark", "STS") == sts
        assert table.instruction(role, "SummEval", "Summarization") == summ
    assert table.template["query"] == "Instruct: {instruction}\nQuery: "


@pytest.mark.parametrize("family", ["nv_embed_v2", "nv_embed_v1"])
def test_nv_embed_non_retrieval_uses_e5_stand_in(family: str) -> None:
    table = InstructionTable.load(family)
    paper = json.loads((REFERENCE / "nv_embed_paper_eval_instructions.json").read_text())
    for kind in ("Classification", "Clustering", "Reranking", "PairClassification"):
        for task, entry in paper[kind].items():
            assert table.instruction("query", task, kind) == entry["use_until_verified"], task
            both = kind in ("Reranking", "PairClassification")
            assert (table.instruction("document", task, kind) == entry["use_until_verified"]) is both, task


@pytest.mark.parametrize("family", ["nv_embed_v2", "nv_embed_v1"])
def test_cqadupstack_choice_is_explicit(family: str) -> None:
    table = InstructionTable.load(family)
    for task in CQA:
        assert table.instruction("query", task, "Retrieval") == E5_CQA
        assert table.prefix_for("document", task=task, task_type="Retrieval") == ""
    text = table.path.read_text()
    assert "CQADupstack*Retrieval has no entry in NVIDIA's file" in text and "Rejected alternatives" in text


def test_nv_retriever_format() -> None:
    table = InstructionTable.load("nv_retriever_v1")
    e5 = json.loads((REFERENCE / "e5_mistral.json").read_text())["instructions"]["Retrieval"]
    assert table.prefix_for("query", task="SciFact") == e5["SciFact"] + ": "
    assert table.prefix_for("query", task="CQADupstackGisRetrieval") == E5_CQA + ": "
    assert table.prefix_for("document", task="QuoraRetrieval") == "passage: "
    card = json.loads((REFERENCE / "nv_retriever_v1.json").read_text())["model_card_example"]
    assert table.prefix_for("query", task="SomethingNew") == card["query_prefix"]
    assert table.prefix_for("query", instruction="Find it") == "Find it: "
    assert table.prefix_for("query", instruction="") == ""


def test_embedqa_prefixes_everywhere() -> None:
    table = InstructionTable.load("nv_embedqa")
    for task in ("SciFact", "CQADupstackGisRetrieval", "STSBenchmark"):
        assert table.prefix_for("query", task=task) == "query: "
        assert table.prefix_for("document", task=task) == "passage: "


@pytest.mark.parametrize(
    "family", ["nv_embed_v2", "nv_embed_v1", "nv_retriever_v1", "nv_embedqa", "nv_rerankqa"]
)
def test_each_file_records_source_and_sides(family: str) -> None:
    table = InstructionTable.load(family)
    assert table.source
    assert "Sides:" in table.path.read_text()
