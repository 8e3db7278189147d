"""The NVIDIA adapters batch through ``run_batches``: a padded-token budget (``batch_tokens``) and the
out-of-memory back-off change how texts are grouped, never the vectors or logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import harness
from harness.engine import batching
from harness.errors import ConfigError
from harness.models import bidirectional as bidir
from tests.models.conftest import LLAMA_FIXTURE, NV_FIXTURE, fixture_arrays, fixture_cases

NV_CASES = fixture_cases(NV_FIXTURE)
LLAMA_CASES = fixture_cases(LLAMA_FIXTURE)


def _spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (rows, padded length) of every batch the adapters pad."""
    shapes: list[tuple[int, int]] = []
    real = bidir.pad_batch

    def spy(rows: Any, *args: Any, **kwargs: Any) -> Any:
        ids, mask = real(rows, *args, **kwargs)
        shapes.append(tuple(ids.shape))
        return ids, mask

    monkeypatch.setattr(bidir, "pad_batch", spy)
    return shapes


def _load(name: str, path: Any, **overrides: Any) -> Any:
    return harness.load_model(name, device="cpu", path=str(path), **overrides)


def _nv_embed(adapter: Any) -> np.ndarray:
    spec = NV_CASES["passages"]
    return adapter.embed(spec["texts"], prefix=spec["instruction"], role="query", batch_size=8)


def _llama_embed(adapter: Any) -> np.ndarray:
    return adapter.embed(LLAMA_CASES["embed_passages_right"]["texts"], prefix="", role="document", batch_size=8)


def _llama_rerank(adapter: Any) -> np.ndarray:
    spec = LLAMA_CASES["rerank_left"]
    return adapter.score_pairs([spec["query"]] * len(spec["documents"]), spec["documents"], batch_size=8)


CASES: dict[str, tuple[str, Any, Callable[[Any], np.ndarray], np.ndarray]] = {
    "nv-embed-v2": (
        "nv-embed-v2", NV_FIXTURE / "checkpoint", _nv_embed, fixture_arrays(NV_FIXTURE, "passages")["embeddings"]
    ),
    "nv-embedqa-1b-v2": (
        "nv-embedqa-1b-v2",
        LLAMA_FIXTURE / "embedder",
        _llama_embed,
        fixture_arrays(LLAMA_FIXTURE, "embed_passages_right")["embeddings"],
    ),
    "nv-rerankqa-1b-v2": (
        "nv-rerankqa-1b-v2",
        LLAMA_FIXTURE / "reranker",
        _llama_rerank,
        fixture_arrays(LLAMA_FIXTURE, "rerank_left")["logits"][:, 0],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_token_budget_splits_batches_and_keeps_outputs(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name, path, run, expected = CASES[case]
    adapter = _load(name, path, batch_tokens=40)
    shapes = _spy_batches(monkeypatch)
    got = run(adapter)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert len(shapes) > 1, "a 40-token budget must split these texts into several batches"
    assert all(rows == 1 or rows * length <= 40 for rows, length in shapes), shapes
    assert [length for _, length in shapes] == sorted((length for _, length in shapes), reverse=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_memory_halves_and_completes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name, path, run, expected = CASES[case]
    adapter = _load(name, path)
    shapes = _spy_batches(monkeypatch)
    real = torch.nn.Module.__call__
    model = adapter.model

    def small_batches_only(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if module is model or getattr(model, "embedding_model", None) is module or getattr(
            model, "model", None
        ) is module:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", small_batches_only)
    got = run(adapter)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert shapes[0][0] > 1 and all(rows == 1 for rows, _ in shapes[-len(expected) :])
    assert batching.last_working_batch_size == 1


@pytest.mark.parametrize("value", [-5, "many", True])
def test_bad_batch_tokens_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match="batch_tokens"):
        _load("nv-embed-v2", NV_FIXTURE / "checkpoint", batch_tokens=value)


def test_configs_set_a_token_budget() -> None:
    from harness.config import load_group_entry

    for name in ("nv-embed-v1", "nv-embed-v2", "nv-retriever-v1", "nv-embedqa-1b-v2", "nv-rerankqa-1b-v2"):
        cfg = load_group_entry("model", name)
        assert int(cfg["batch_tokens"]) >= 16384 and int(cfg["batch_size"]) >= 64, name
