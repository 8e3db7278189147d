"""NV-Embed native adapter against the golden fixture produced by NVIDIA's original code (transformers
4.42.4): every case through ``harness.load_model(...).encode_texts(...)`` from the fixture checkpoint folder
as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.models import bidirectional as bidir
from tests.models.conftest import NV_FIXTURE, fixture_arrays, fixture_cases

CASES = fixture_cases(NV_FIXTURE)
CHECKPOINT = NV_FIXTURE / "checkpoint"
TEMPLATE_HEAD, TEMPLATE_TAIL = "Instruct: ", "\nQuery: "


def bare_instruction(prompt: str) -> str:
    """The fixture stores the full prompt; the Python API takes the bare instruction and wraps it."""
    if not prompt:
        return ""
    assert prompt.startswith(TEMPLATE_HEAD) and prompt.endswith(TEMPLATE_TAIL)
    return prompt[len(TEMPLATE_HEAD) : -len(TEMPLATE_TAIL)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_case_via_python_api(load_adapter, case: str) -> None:
    spec, arrays = CASES[case], fixture_arrays(NV_FIXTURE, case)
    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=spec["max_length"])
    # the STS case puts the instruction on "documents": exercise the document side of the template
    role = "document" if case == "sts_symmetric" else "query"
    got = adapter.encode_texts(spec["texts"], role=role, instruction=bare_instruction(spec["instruction"]))
    assert got.dtype == np.float32 and got.shape == arrays["embeddings"].shape
    np.testing.assert_allclose(got, arrays["embeddings"], atol=1e-5, rtol=0)
    assert adapter.prefixes_used["<none>"][role] == spec["instruction"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_token_ids_and_pool_mask_match_the_original(load_adapter, case: str) -> None:
    spec, arrays = CASES[case], fixture_arrays(NV_FIXTURE, case)
    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=spec["max_length"])
    ids, mask = bidir.pad_batch(
        adapter.tokenize(spec["texts"], spec["instruction"]), 2, "right", adapter.device
    )
    np.testing.assert_array_equal(ids.numpy(), arrays["input_ids"])
    np.testing.assert_array_equal(mask.numpy(), arrays["attention_mask"])
    n = adapter.instruction_length(spec["instruction"])
    assert n == spec["instruction_lens"]
    pool = mask.clone()
    pool[:, :n] = 0
    np.testing.assert_array_equal(pool.numpy(), arrays["pool_mask"])


def test_truncation_cuts_the_eos_text(load_adapter) -> None:
    arrays = fixture_arrays(NV_FIXTURE, "passages_trunc16")
    assert (arrays["input_ids"][:, -1] != 2).any(), "fixture premise: EOS truncated away"


@pytest.mark.parametrize("case", ["queries", "passages"])
def test_backbone_and_latent_outputs(load_adapter, case: str) -> None:
    """The intermediate arrays: bidirectional Mistral hidden states and per-token latent-attention outputs."""
    arrays = fixture_arrays(NV_FIXTURE, case)
    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=4096)
    ids = torch.from_numpy(arrays["input_ids"])
    mask = torch.from_numpy(arrays["attention_mask"])
    with torch.inference_mode():
        hidden = bidir.hidden_states(adapter.model.embedding_model, ids, mask)
        tokens = adapter.model.latent_attention_model(hidden)
    real = arrays["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        hidden.numpy()[real], arrays["backbone_last_hidden_state"][real], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(tokens.numpy()[real], arrays["latent_token_outputs"][real], atol=1e-5, rtol=0)


def test_one_by_one_equals_batched(load_adapter) -> None:
    spec, arrays = CASES["queries"], fixture_arrays(NV_FIXTURE, "queries")
    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=4096)
    instruction = bare_instruction(spec["instruction"])
    one = np.concatenate([adapter.encode_texts([t], instruction=instruction) for t in spec["texts"]])
    np.testing.assert_allclose(one, arrays["embeddings_batch1"], atol=1e-5, rtol=0)


def test_task_picks_nvidia_instruction(load_adapter) -> None:
    """task="NQ" resolves NVIDIA's NQ string, which is the fixture's query instruction."""
    spec, arrays = CASES["queries"], fixture_arrays(NV_FIXTURE, "queries")
    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=4096)
    got = adapter.encode_texts(spec["texts"], role="query", task="NQ")
    np.testing.assert_allclose(got, arrays["embeddings"], atol=1e-5, rtol=0)
    assert adapter.prefixes_used["NQ"]["query"] == spec["instruction"]
    # documents of a retrieval task get no instruction: the fixture's passages case
    passages = fixture_arrays(NV_FIXTURE, "passages")
    docs = adapter.encode_texts(CASES["passages"]["texts"], role="document", task="NQ")
    np.testing.assert_allclose(docs, passages["embeddings"], atol=1e-5, rtol=0)


def test_config_keys_the_fixture_exercises(load_adapter) -> None:
    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=4096)
    # output_normalize is missing from the fixture's JSON: the class default (true) applies
    assert adapter.output_normalize is True
    assert adapter.latent["num_latents_value"] == 16 and adapter.latent["cross_dim_head"] == 24
    # the text_config's sliding_window=8 must be ignored
    assert adapter.model.embedding_model.config.sliding_window is None
    # tokenizer defaults (left padding, no pad token) overridden as the original did
    assert adapter.padding_side == "right" and adapter.tokenizer.eos_token == "</s>"
    assert adapter.embed_dim == 64
    described = adapter.describe()
    assert described["instruction_masking"].startswith("first len(") and described["dtype"] == "float32"


def test_too_short_max_length_is_an_error(load_adapter) -> None:
    from harness.errors import ConfigError

    adapter = load_adapter("nv-embed-v2", path=str(CHECKPOINT), max_length=8)
    with pytest.raises(ConfigError, match="max_length=8"):
        adapter.encode_texts(
            ["what?"], instruction="Given a question, retrieve passages that answer the question"
        )
