"""The generic CrossEncoder adapter (harness/models/cross_encoder.py) on a seeded random-head MiniLM cross-encoder:
raw logits equal sentence-transformers' own prediction, the mteb CrossEncoderProtocol path gives the same numbers,
and bad configs fail at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.models.cross_encoder import CrossEncoderAdapter
from tests.pipeline.builders import build_random_cross_encoder

QUERIES = ["why does rain fall", "why does rain fall", "what heats the ground"]
PASSAGES = ["Rain falls from clouds when droplets grow heavy.", "The sun heats the ground.",
            "The sun heats the ground."]


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_cross_encoder(tmp_path_factory.mktemp("ce") / "random-ce", seed=0)


def adapter(ce_dir: Path, **cfg: object) -> CrossEncoderAdapter:
    return CrossEncoderAdapter({"name": "test/random-ce", "path": str(ce_dir), "device": "cpu", **cfg})


def test_score_pairs_are_the_raw_logits(ce_dir: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    scores = adapter(ce_dir).score_pairs(QUERIES, PASSAGES)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    pairs = list(zip(QUERIES, PASSAGES, strict=True))
    direct = CrossEncoder(str(ce_dir), device="cpu").predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
    assert len(set(scores.tolist())) == 3  # the head is random, not constant
    np.testing.assert_array_equal(scores, adapter(ce_dir).score_pairs(QUERIES, PASSAGES))  # deterministic
    sigmoid = adapter(ce_dir, activation="sigmoid").score_pairs(QUERIES, PASSAGES)
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-scores.astype(np.float64))), rtol=1e-5)


def test_seeded_build_is_reproducible(ce_dir: Path, tmp_path: Path) -> None:
    again = build_random_cross_encoder(tmp_path / "again", seed=0)
    other = build_random_cross_encoder(tmp_path / "other", seed=1)
    a, b, c = (adapter(d).score_pairs(QUERIES, PASSAGES) for d in (ce_dir, again, other))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_mteb_cross_encoder_protocol(ce_dir: Path) -> None:
    from datasets import Dataset

    from harness.mteb_import import import_mteb

    mteb = import_mteb()
    from mteb.models.models_protocols import CrossEncoderProtocol, EncoderProtocol
    from mteb.models.search_wrappers import SearchCrossEncoderWrapper

    model = adapter(ce_dir, query_prefix="q: ")
    assert isinstance(model, CrossEncoderProtocol) and not isinstance(model, EncoderProtocol)
    assert model.mteb_model_meta.model_type == ["cross-encoder"]
    meta = mteb.get_task("SciFact").metadata  # real metadata: mteb's dataloaders read it
    corpus = Dataset.from_dict({"id": ["d1", "d2"], "title": ["", ""], "text": [PASSAGES[0], PASSAGES[1]]})
    queries = Dataset.from_dict({"id": ["q1", "q2"], "text": [QUERIES[0], QUERIES[2]]})
    search = SearchCrossEncoderWrapper(model)
    kw = {"task_metadata": meta, "hf_split": "test", "hf_subset": "default", "encode_kwargs": {"batch_size": 2}}
    search.index(corpus, **kw)
    run = search.search(queries, top_k=2, top_ranked={"q1": ["d1", "d2"], "q2": ["d2"]}, **kw)
    expected = model.score_pairs([QUERIES[0], QUERIES[0], QUERIES[2]], PASSAGES)  # the adapter adds "q: "
    assert run["q1"]["d1"] == pytest.approx(float(expected[0]), rel=1e-5)
    assert run["q1"]["d2"] == pytest.approx(float(expected[1]), rel=1e-5)
    assert run["q2"] == {"d2": pytest.approx(float(expected[2]), rel=1e-5)}
    assert model.prefixes_used["SciFact"] == {"query": "q: ", "document": ""}
    unprefixed = adapter(ce_dir).score_pairs(QUERIES[:1], PASSAGES[:1])
    assert not np.allclose(unprefixed, expected[:1])  # the prefix reaches the model


def test_bad_configs_fail_at_load(ce_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="activation"):
        adapter(ce_dir, activation="softmax")
    two_labels = build_random_cross_encoder(tmp_path / "two", num_labels=2)
    with pytest.raises(ConfigError, match="one output logit"):
        adapter(two_labels)
    with pytest.raises(ValueError, match="2 queries but 1 passages"):
        adapter(ce_dir).score_pairs(QUERIES[:2], PASSAGES[:1])
