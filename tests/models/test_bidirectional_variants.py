"""The fixtures catch a silently causal or sliding-window backbone: each variant below is what a port of the
original code to current transformers easily ends up computing, and each must miss every fixture case by far
more than the 1e-5 tolerance. (This is how we checked that the bidirectional mask is what makes the adapters
pass.)

Variants, swapped in for the adapters' mask / forward (``harness.models.bidirectional``):
* ``causal``: key padding + a causal triangle (what ``LlamaModel`` does when the old ``_update_causal_mask``
  override is dead code, transformers >= 4.53);
* ``sliding``: causal within a window of 8 (stock Mistral with the fixture config's ``sliding_window=8``);
* ``window_bidir``: non-causal but windowed (|i - j| < 8), a half-fixed port that forgot the window;
* ``stock``: the 2-D mask handed to the stock model, which then builds its own (causal / sliding) mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness
from harness.models import bidirectional as bidir
from tests.models.conftest import LLAMA_FIXTURE, NV_FIXTURE, fixture_arrays, fixture_cases

WINDOW = 8


def variant_mask(kind: str):
    def mask(attention_mask: torch.Tensor, dtype: torch.dtype, attn_implementation: str) -> torch.Tensor:
        batch, length = attention_mask.shape
        keep = attention_mask.bool()[:, None, None, :].expand(batch, 1, length, length)
        i = torch.arange(length)[:, None]
        j = torch.arange(length)[None, :]
        if kind == "causal":
            keep = keep & (j <= i)
        elif kind == "sliding":
            keep = keep & (j <= i) & (i - j < WINDOW)
        elif kind == "window_bidir":
            keep = keep & ((i - j).abs() < WINDOW)
        if attn_implementation == "sdpa":
            return keep
        return torch.zeros((), dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)

    return mask


def stock_hidden_states(sliding_window: int | None):
    def forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for layer in model.layers:  # a naive port: the model's own flags and mask creation
            layer.self_attn.is_causal = True
        model.config.is_causal = True
        model.config.sliding_window = sliding_window
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    return forward


def fresh_adapters() -> dict[str, object]:
    """Not the session cache: the ``stock`` variant changes the models' flags."""
    return {
        "nv": harness.load_model("nv-embed-v2", path=str(NV_FIXTURE / "checkpoint"), device="cpu"),
        "embed": harness.load_model("nv-embedqa-1b-v2", path=str(LLAMA_FIXTURE / "embedder"), device="cpu"),
        "rerank": harness.load_model("nv-rerankqa-1b-v2", path=str(LLAMA_FIXTURE / "reranker"), device="cpu"),
    }


@pytest.fixture(scope="module")
def adapters() -> dict[str, object]:
    return fresh_adapters()


def nv_embed_errors(adapters: dict) -> list[float]:
    errors = []
    adapter = adapters["nv"]
    for case, spec in fixture_cases(NV_FIXTURE).items():
        adapter.max_length = spec["max_length"]
        got = adapter.embed(spec["texts"], prefix=spec["instruction"], role="query", batch_size=8)
        errors.append(float(np.abs(got - fixture_arrays(NV_FIXTURE, case)["embeddings"]).max()))
    return errors


def llama_errors(adapters: dict) -> list[float]:
    errors = []
    cases = fixture_cases(LLAMA_FIXTURE)
    embedder, reranker = adapters["embed"], adapters["rerank"]
    for case, spec in cases.items():
        arrays = fixture_arrays(LLAMA_FIXTURE, case)
        if case.startswith("embed_"):
            embedder.max_length = spec["max_length"]
            got = embedder.embed(spec["texts"], prefix="", role="query", batch_size=8)
            errors.append(float(np.abs(got - arrays["embeddings"]).max()))
        else:
            got = reranker.score_pairs([spec["query"]] * 3, spec["documents"])
            errors.append(float(np.abs(got - arrays["logits"][:, 0]).max()))
    return errors


@pytest.mark.parametrize("kind", ["causal", "sliding", "window_bidir"])
def test_nv_embed_mask_variants_fail_every_case(
    monkeypatch: pytest.MonkeyPatch, adapters: dict, kind: str
) -> None:
    assert max(nv_embed_errors(adapters)) < 1e-5  # the real mask passes ...
    monkeypatch.setattr(bidir, "key_padding_mask", variant_mask(kind))
    errors = nv_embed_errors(adapters)  # ... the variant misses every case
    print(f"{kind}: fixture errors {errors}")
    assert min(errors) > 1e-3, f"{kind}: some fixture case does not notice: {errors}"


def test_nv_embed_stock_sliding_forward_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bidir, "hidden_states", stock_hidden_states(WINDOW))
    errors = nv_embed_errors(fresh_adapters())
    print(f"stock forward: fixture errors {errors}")
    assert min(errors) > 1e-3, errors


@pytest.mark.parametrize("kind", ["causal", "window_bidir"])
def test_llama_mask_variants_fail_every_case(
    monkeypatch: pytest.MonkeyPatch, adapters: dict, kind: str
) -> None:
    assert max(llama_errors(adapters)) < 1e-5
    monkeypatch.setattr(bidir, "key_padding_mask", variant_mask(kind))
    errors = llama_errors(adapters)
    print(f"{kind}: fixture errors {errors}")
    assert min(errors) > 1e-3, f"{kind}: some fixture case does not notice: {errors}"


def test_llama_stock_causal_forward_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bidir, "hidden_states", stock_hidden_states(None))
    errors = llama_errors(fresh_adapters())
    print(f"stock forward: fixture errors {errors}")
    assert min(errors) > 1e-3, errors


def test_mask_is_padding_only() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    keep = bidir.key_padding_mask(mask, torch.float32, "sdpa")
    assert keep.shape == (2, 1, 4, 4) and keep.dtype == torch.bool
    # every query row (pad rows too) sees exactly the real keys, before and after itself
    assert keep[0, 0].tolist() == [[True, True, True, False]] * 4
    assert bool(keep[1].all())
    additive = bidir.key_padding_mask(mask, torch.float32, "eager")
    assert additive[0, 0, 0].tolist()[:3] == [0.0, 0.0, 0.0] and additive[0, 0, 0, 3] < -1e30


def test_eager_attention_matches_fixture() -> None:
    spec = fixture_cases(NV_FIXTURE)["queries"]
    adapter = harness.load_model(
        "nv-embed-v2", path=str(NV_FIXTURE / "checkpoint"), device="cpu", attn_implementation="eager"
    )
    got = adapter.embed(spec["texts"], prefix=spec["instruction"], role="query", batch_size=8)
    np.testing.assert_allclose(got, fixture_arrays(NV_FIXTURE, "queries")["embeddings"], atol=1e-5, rtol=0)
