"""NV-Retriever-v1's pooling rule (model card, no original code to compare with, so NOT a golden fixture):
mean over the real tokens strictly after the FIRST separator (id 28747, ':'); no separator, or nothing after
it, falls back to all real tokens with a warning. Hand-built ids and hidden states."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import harness
from harness.errors import CheckpointError, ConfigError
from harness.models.nv_retriever import MISTRAL_COLON_ID, separator_pool_mask

SEP = MISTRAL_COLON_ID
BOS, PAD = 1, 2


def pool(ids: list[list[int]], mask: list[list[int]]) -> tuple[list[list[int]], list[bool]]:
    out, fallback = separator_pool_mask(torch.tensor(ids), torch.tensor(mask), SEP)
    return out.tolist(), fallback.tolist()


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([BOS, SEP, 10, 11, 12], [0, 0, 1, 1, 1]),  # "passage: ..." right after BOS
        ([BOS, 5, 6, 7, SEP, 10, 11], [0, 0, 0, 0, 0, 1, 1]),  # instruction of several tokens
        ([BOS, 5, 6, 7, 8, SEP, 10], [0, 0, 0, 0, 0, 0, 1]),  # one token after it
        ([BOS, 5, SEP, 10, SEP, 11], [0, 0, 0, 1, 1, 1]),  # a second ':' inside the query is pooled like text
        ([SEP, SEP, 10], [0, 1, 1]),  # the second of two adjacent ':' is text
    ],
)
def test_pools_after_first_separator(ids: list[int], expected: list[int]) -> None:
    got, fallback = pool([ids], [[1] * len(ids)])
    assert got == [expected] and fallback == [False]


def test_absent_separator_falls_back_to_all_real_tokens() -> None:
    got, fallback = pool([[BOS, 5, 6, 7, PAD, PAD]], [[1, 1, 1, 1, 0, 0]])
    assert got == [[1, 1, 1, 1, 0, 0]] and fallback == [True]


def test_separator_as_last_token_falls_back() -> None:
    """Truncation right after the ':' leaves nothing to pool: fallback, not a division by zero."""
    got, fallback = pool([[BOS, 5, SEP, PAD]], [[1, 1, 1, 0]])
    assert got == [[1, 1, 1, 0]] and fallback == [True]


def test_padding_is_never_pooled_and_pad_separators_ignored() -> None:
    # right padding whose pad id happens to be the separator; and left padding
    got, fallback = pool([[BOS, 5, 6, SEP, SEP], [SEP, BOS, 5, SEP, 9]], [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    assert got == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 1]] and fallback == [True, False]


def test_batch_rows_are_independent() -> None:
    ids = [[BOS, SEP, 10, 11], [BOS, 5, 6, 7], [BOS, 5, SEP, 12]]
    got, fallback = pool(ids, [[1] * 4] * 3)
    assert got == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]] and fallback == [False, True, False]


@pytest.fixture(scope="module")
def retriever(tiny_checkpoints):
    """A tiny random checkpoint; its tokenizer (the fixture's Mistral-like one) has ':' at another id."""
    from harness.models.bidirectional import load_tokenizer

    folder = tiny_checkpoints["nv_retriever"]
    colon = load_tokenizer(folder).convert_tokens_to_ids(":")
    return harness.load_model("nv-retriever-v1", path=str(folder), device="cpu", separator_token_id=colon)


def test_adapter_pools_hand_built_hidden_states(retriever) -> None:
    sep = retriever.separator_id
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    ids = torch.tensor([[BOS, 5, sep, 10, 11], [BOS, 5, 6, 7, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    retriever.normalize = False
    try:
        vectors, n_fallback = retriever.pool(hidden, ids, mask)
    finally:
        retriever.normalize = True
    np.testing.assert_allclose(vectors[0].numpy(), hidden[0, 3:5].mean(0).numpy())
    np.testing.assert_allclose(vectors[1].numpy(), hidden[1, 0:4].mean(0).numpy())
    assert n_fallback == 1


def test_adapter_warns_on_fallback(retriever, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="harness.models.nv_retriever"):
        vectors = retriever.encode_texts(["no separator here", "another one"], instruction="")
    assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert "2 of 2 query text(s) have no token after a separator" in caplog.text


def test_adapter_uses_instruction_template_and_passage_prefix(retriever, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="harness.models.nv_retriever"):
        retriever.encode_texts(["what causes rain"], role="query", task="SciFact")
        retriever.encode_texts(["Rain forms when"], role="document", task="SciFact")
    assert retriever.prefixes_used["SciFact"] == {
        "query": "Given a scientific claim, retrieve documents that support or refute the claim: ",
        "document": "passage: ",
    }
    # the tiny tokenizer maps ':' to the configured separator, so nothing fell back
    assert "have no token after a separator" not in caplog.text


def test_checkpoint_prefix_and_config(retriever) -> None:
    assert retriever.weight_prefix == "model."
    assert retriever.model.config.sliding_window is None
    assert retriever.max_length == 512
    assert retriever.describe()["separator_token_id"] == retriever.separator_id


def test_bad_separator_id_is_a_config_error(tiny_checkpoints) -> None:
    with pytest.raises(ConfigError, match="separator_token_id=100000"):
        harness.load_model(
            "nv-retriever-v1",
            path=str(tiny_checkpoints["nv_retriever"]),
            device="cpu",
            separator_token_id=100000,
        )


def test_unknown_weight_prefix_is_a_checkpoint_error(tiny_checkpoints, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    src = tiny_checkpoints["nv_retriever"]
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    state = load_file(str(src / "model.safetensors"))
    save_file(
        {k.replace("model.", "backbone.", 1): v for k, v in state.items()},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight"):
        harness.load_model("nv-retriever-v1", path=str(tmp_path), device="cpu")
