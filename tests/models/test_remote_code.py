"""``model.loader=remote`` (NVIDIA's trust_remote_code implementation) checks the transformers version its
code needs before loading anything, and fails with a message that names both versions and the way out."""

from __future__ import annotations

import pytest
import transformers

import harness
from harness.errors import ConfigError
from harness.models.remote_code import check_transformers
from tests.models.conftest import LLAMA_FIXTURE, NV_FIXTURE


@pytest.mark.parametrize(
    ("model", "path", "needed", "native"),
    [
        ("nv-embed-v2", NV_FIXTURE / "checkpoint", "==4.42.4", "nv_embed"),
        ("nv-embed-v1", NV_FIXTURE / "checkpoint", "==4.42.4", "nv_embed"),
        ("nv-embedqa-1b-v2", LLAMA_FIXTURE / "embedder", "<4.53,>=4.44", "llama_embed"),
    ],
)
def test_wrong_transformers_fails_clearly(model: str, path, needed: str, native: str) -> None:
    with pytest.raises(ConfigError) as info:
        harness.load_model(model, path=str(path), device="cpu", loader="remote")
    message = str(info.value)
    assert f"needs transformers{needed}" in message
    assert f"this environment has transformers {transformers.__version__}" in message
    assert f"model.loader={native}" in message


def test_check_passes_when_the_version_fits() -> None:
    assert check_transformers(f"=={transformers.__version__}", "m", None) == transformers.__version__
    assert check_transformers(">=4.0", "m", None) == transformers.__version__


def test_bare_version_means_exact_and_missing_spec_refuses() -> None:
    with pytest.raises(ConfigError, match=r"needs transformers==4\.42\.4"):
        check_transformers("4.42.4", "m", None)
    with pytest.raises(ConfigError, match=r"no remote_code\.transformers requirement"):
        check_transformers(None, "m", None)
    with pytest.raises(ConfigError, match="not a version specifier"):
        check_transformers("==four", "m", None)
