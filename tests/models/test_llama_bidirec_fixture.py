"""llama-3.2-nv-embedqa-1b-v2 / rerankqa-1b-v2 native adapters against the golden fixture produced by NVIDIA's
original llama_bidirec code (transformers 4.47.1), through ``harness.load_model`` from the folders as they
are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import CheckpointError, ConfigError
from harness.models import bidirectional as bidir
from harness.models.llama_bidirec import rerank_texts
from tests.models.conftest import LLAMA_FIXTURE, build_llama_rerank, fixture_arrays, fixture_cases

CASES = fixture_cases(LLAMA_FIXTURE)
EMBED_CASES = sorted(c for c in CASES if c.startswith("embed_"))
RERANK_CASES = sorted(c for c in CASES if c.startswith("rerank_"))
EMBEDDER, RERANKER = str(LLAMA_FIXTURE / "embedder"), str(LLAMA_FIXTURE / "reranker")


def split_prefix(texts: list[str]) -> tuple[str, list[str]]:
    """The fixture texts carry the prefix; the API adds it from the role."""
    role = "query" if texts[0].startswith("query: ") else "document"
    prefix = "query: " if role == "query" else "passage: "
    assert all(t.startswith(prefix) for t in texts)
    return role, [t[len(prefix) :] for t in texts]


@pytest.mark.parametrize("case", EMBED_CASES)
def test_embed_case_via_python_api(load_adapter, case: str) -> None:
    spec, arrays = CASES[case], fixture_arrays(LLAMA_FIXTURE, case)
    adapter = load_adapter("nv-embedqa-1b-v2", path=EMBEDDER, max_length=spec["max_length"])
    role, texts = split_prefix(spec["texts"])
    got = adapter.encode_texts(texts, role=role)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, arrays["embeddings"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", EMBED_CASES)
def test_embed_tokens_and_hidden_states(load_adapter, case: str) -> None:
    spec, arrays = CASES[case], fixture_arrays(LLAMA_FIXTURE, case)
    adapter = load_adapter("nv-embedqa-1b-v2", path=EMBEDDER, max_length=spec["max_length"])
    encodings = adapter.tokenizer(spec["texts"], max_length=spec["max_length"], truncation=True)["input_ids"]
    ids, mask = bidir.pad_batch(encodings, 381, spec["padding_side"], adapter.device)
    np.testing.assert_array_equal(ids.numpy(), arrays["input_ids"])
    np.testing.assert_array_equal(mask.numpy(), arrays["attention_mask"])
    assert all(row[-1] != 381 for row in encodings), "the embedder appends no EOS"
    with torch.inference_mode():
        hidden = bidir.hidden_states(adapter.model, ids, mask)
    real = arrays["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden.numpy()[real], arrays["last_hidden_state"][real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(adapter.pooled(ids, mask).numpy(), arrays["pooled"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [16, 48])
def test_matryoshka_truncates_then_renormalises(load_adapter, dims: int) -> None:
    spec, arrays = CASES["embed_queries_right"], fixture_arrays(LLAMA_FIXTURE, "embed_queries_right")
    adapter = load_adapter("nv-embedqa-1b-v2", path=EMBEDDER, dimensions=dims)
    role, texts = split_prefix(spec["texts"])
    got = adapter.encode_texts(texts, role=role)
    cut = arrays["pooled"][:, :dims]
    expected = cut / np.linalg.norm(cut, axis=1, keepdims=True)
    assert got.shape == (3, dims) and adapter.embed_dim == dims
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_matryoshka_wider_than_model_is_an_error() -> None:
    import harness

    with pytest.raises(ConfigError, match="dimensions=65"):
        harness.load_model("nv-embedqa-1b-v2", path=EMBEDDER, device="cpu", dimensions=65)


@pytest.mark.parametrize("case", RERANK_CASES)
def test_rerank_case_via_score_pairs(load_adapter, case: str) -> None:
    spec, arrays = CASES[case], fixture_arrays(LLAMA_FIXTURE, case)
    adapter = load_adapter("nv-rerankqa-1b-v2", path=RERANKER)
    queries = [spec["query"]] * len(spec["documents"])
    got = adapter.score_pairs(queries, spec["documents"])
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, arrays["logits"][:, 0], atol=1e-5, rtol=0)
    assert rerank_texts(adapter.template, queries, spec["documents"]) == spec["texts"]


def test_rerank_left_padding_ids_match(load_adapter) -> None:
    spec, arrays = CASES["rerank_left"], fixture_arrays(LLAMA_FIXTURE, "rerank_left")
    adapter = load_adapter("nv-rerankqa-1b-v2", path=RERANKER)
    encodings = adapter.tokenizer(spec["texts"], max_length=adapter.max_length, truncation=True)["input_ids"]
    ids, mask = bidir.pad_batch(encodings, 381, "left", adapter.device)
    np.testing.assert_array_equal(ids.numpy(), arrays["input_ids"])
    np.testing.assert_array_equal(mask.numpy(), arrays["attention_mask"])
    assert adapter.temperature == 1.0, "config.json lacks temperature: the class default 1.0"


def test_rerank_predict_protocol(load_adapter) -> None:
    """mteb's CrossEncoderProtocol: two loaders of {"text": [...]} batches, pair i = (inputs1[i],
    inputs2[i])."""
    spec, arrays = CASES["rerank_right"], fixture_arrays(LLAMA_FIXTURE, "rerank_right")
    adapter = load_adapter("nv-rerankqa-1b-v2", path=RERANKER)
    docs = spec["documents"]
    inputs1 = [{"text": [spec["query"]] * 2}, {"text": [spec["query"]]}]
    inputs2 = [{"text": docs[:2]}, {"text": docs[2:]}]
    meta = type("Meta", (), {"name": "SciFact"})()
    got = adapter.predict(inputs1, inputs2, task_metadata=meta, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(got, arrays["logits"][:, 0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="2 queries but 3 passages"):
        adapter.score_pairs([spec["query"]] * 2, docs)


def test_rerank_divides_by_temperature(tmp_path) -> None:
    import harness

    plain = harness.load_model(
        "nv-rerankqa-1b-v2", path=str(build_llama_rerank(tmp_path / "t1")), device="cpu"
    )
    hot = harness.load_model(
        "nv-rerankqa-1b-v2", path=str(build_llama_rerank(tmp_path / "t2", temperature=4.0)), device="cpu"
    )
    pairs = (["what is rain?", "what is rain?"], ["Rain is water.", "Paris is a city."])
    base, scaled = plain.score_pairs(*pairs), hot.score_pairs(*pairs)
    assert hot.temperature == 4.0 and np.abs(base).max() > 1e-3
    np.testing.assert_allclose(scaled, base / 4.0, atol=1e-6, rtol=0)


def test_rerank_rejects_multi_label_head(tmp_path) -> None:
    import json

    import harness

    folder = build_llama_rerank(tmp_path / "two")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "A", "1": "B"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="2 labels"):
        harness.load_model("nv-rerankqa-1b-v2", path=str(folder), device="cpu")
