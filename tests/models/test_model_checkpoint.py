"""Strict checkpoint loading: a checkpoint that does not match its config is a CheckpointError naming the
keys, never a silently random-initialised layer; sharded checkpoints load like single files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import harness
from harness.errors import CheckpointError

TEXTS = ["what causes rain", "Rain forms when vapour condenses."]


def copy_checkpoint(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        state = load_file(str(dst / "model.safetensors"))
        edit(state)
        save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("model", ["nv-embed-v2", "nv-embedqa-1b-v2"])
def test_missing_key_is_named(tiny_checkpoints, tmp_path, model: str) -> None:
    src = tiny_checkpoints["nv_embed" if model == "nv-embed-v2" else "llama_embed"]
    victim = (
        "latent_attention_model.cross_attend_blocks.1.fn.net.2.bias"
        if model == "nv-embed-v2"
        else "norm.weight"
    )
    folder = copy_checkpoint(src, tmp_path / "ckpt", lambda s: s.pop(victim))
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): " + victim.replace(".", r"\.")):
        harness.load_model(model, path=str(folder), device="cpu")


def test_unexpected_key_is_named(tiny_checkpoints, tmp_path) -> None:
    folder = copy_checkpoint(
        tiny_checkpoints["nv_embed"],
        tmp_path / "ckpt",
        lambda s: s.update({"lm_head.weight": torch.zeros(400, 16)}),
    )
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): lm_head\.weight"):
        harness.load_model("nv-embed-v2", path=str(folder), device="cpu")


def test_wrong_shape_is_named(tiny_checkpoints, tmp_path) -> None:
    key = "latent_attention_model.latents"
    folder = copy_checkpoint(
        tiny_checkpoints["nv_embed"], tmp_path / "ckpt", lambda s: s.update({key: torch.zeros(5, 16)})
    )
    with pytest.raises(
        CheckpointError, match=rf"wrong shape for {key}: checkpoint \[5, 16\], config expects \[4, 16\]"
    ):
        harness.load_model("nv-embed-v2", path=str(folder), device="cpu")


def test_config_that_disagrees_with_weights(tiny_checkpoints, tmp_path) -> None:
    folder = copy_checkpoint(tiny_checkpoints["llama_rerank"], tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing 9 key\(s\): model\.layers\.1\."):
        harness.load_model("nv-rerankqa-1b-v2", path=str(folder), device="cpu")


def test_latent_dims_must_match_hidden(tiny_checkpoints, tmp_path) -> None:
    folder = copy_checkpoint(tiny_checkpoints["nv_embed"], tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    del config["latent_attention_config"]["latent_dim"]  # falls back to the class default 4096
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="latent_dim=4096"):
        harness.load_model("nv-embed-v2", path=str(folder), device="cpu")


def test_sharded_checkpoint_loads_like_one_file(tiny_checkpoints, tmp_path) -> None:
    src = tiny_checkpoints["nv_embed"]
    folder = copy_checkpoint(src, tmp_path / "sharded")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    one = harness.load_model("nv-embed-v2", path=str(src), device="cpu").encode_texts(TEXTS)
    two = harness.load_model("nv-embed-v2", path=str(folder), device="cpu").encode_texts(TEXTS)
    np.testing.assert_array_equal(one, two)


def test_not_a_checkpoint_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        harness.load_model("nv-embed-v2", path=str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {}}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no 'hidden_size'"):
        harness.load_model("nv-embed-v2", path=str(tmp_path), device="cpu")
    with pytest.raises(CheckpointError, match="is not a folder"):
        harness.load_model("nv-embed-v2", path=str(tmp_path / "nope"), device="cpu")


def test_no_safetensors_is_named(tiny_checkpoints, tmp_path) -> None:
    folder = copy_checkpoint(tiny_checkpoints["llama_embed"], tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights \(found \['pytorch_model\.bin'\]"):
        harness.load_model("nv-embedqa-1b-v2", path=str(folder), device="cpu")


def test_loaded_weights_are_the_checkpoints(tiny_checkpoints) -> None:
    adapter = harness.load_model("nv-embedqa-1b-v2", path=str(tiny_checkpoints["llama_embed"]), device="cpu")
    state = load_file(str(tiny_checkpoints["llama_embed"] / "model.safetensors"))
    loaded = adapter.model.state_dict()
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
    assert not any(b.is_meta for b in adapter.model.buffers())
