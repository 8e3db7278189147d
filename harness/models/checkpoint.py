"""Reading a model checkpoint folder strictly: ``config.json``, safetensors shards, and the hub download of
one.

Owns: where a checkpoint folder comes from (``path`` or ``name`` at ``revision``), reading its config, and
loading its safetensors weights into a module whose parameter names are the checkpoint's own names. A
checkpoint that does not match the module (a missing key, an unexpected key, a wrong shape) is a
``CheckpointError`` naming the keys, never a silently random-initialised layer. Must not know any model
family: the families build the module, this file fills it. Imports only torch and safetensors (plus
huggingface_hub, lazily, for a download).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import CheckpointError

#: how many key names an error message lists before it says "... and N more"
_LIST_LIMIT = 12


def resolve_checkpoint_dir(cfg: Mapping[str, Any]) -> Path:
    """The local folder of the checkpoint: ``cfg["path"]`` when set, else a hub download of ``name`` at
    ``revision``."""
    path = cfg.get("path")
    if path:
        folder = Path(str(path)).expanduser()
        if not folder.is_dir():
            raise CheckpointError(
                f"model.path={str(path)!r} is not a folder (a checkpoint folder with config.json)"
            )
        return folder
    name, revision = str(cfg["name"]), cfg.get("revision")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id=name,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt"],
            )
        )
    except Exception as exc:  # network, auth, unknown revision: all the same to the user
        raise CheckpointError(
            f"could not get {name}@{revision or 'main'} from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Download it yourself and pass model.path=/the/folder"
        ) from exc


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (is this a checkpoint folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def safetensors_files(folder: Path) -> list[Path]:
    """The shards of a checkpoint: the index's files when there is one, else every ``*.safetensors``."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        files = sorted({folder / name for name in weight_map.values()})
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) that are not in the folder: {missing}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {others}: only safetensors are read, convert them)" if others else ""
        raise CheckpointError(f"{folder}: no *.safetensors weights{hint}")
    return files


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name in the checkpoint with its shape (reads headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key in shapes:
                    raise CheckpointError(
                        f"{folder}: tensor {key!r} appears in more than one shard ({file.name})"
                    )
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f" ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else "")


def compare_keys(
    folder: Path,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    prefix: str = "",
) -> None:
    """Raise a CheckpointError naming missing / unexpected / wrongly shaped keys (checkpoint names)."""
    wanted = {prefix + k: tuple(v) for k, v in expected.items()}
    missing = set(wanted) - set(found)
    unexpected = set(found) - set(wanted)
    shapes = {k for k in set(wanted) & set(found) if wanted[k] != tuple(found[k])}
    if not (missing or unexpected or shapes):
        return
    lines = [f"{folder}: the weights do not match the model built from its config.json"]
    if missing:
        lines.append(f"  missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    for key in sorted(shapes)[:_LIST_LIMIT]:
        lines.append(
            f"  wrong shape for {key}: checkpoint {list(found[key])}, config expects {list(wanted[key])}"
        )
    if len(shapes) > _LIST_LIMIT:
        lines.append(f"  ... and {len(shapes) - _LIST_LIMIT} more shape mismatches")
    raise CheckpointError("\n".join(lines))


def load_weights_strict(
    module: nn.Module,
    folder: Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    prefix: str = "",
) -> None:
    """Fill ``module`` (typically built on the meta device) with the checkpoint's tensors, strictly.

    Checkpoint key = ``prefix`` + the module's state-dict key. Floating tensors are cast to ``dtype``; the
    module's parameters are replaced (``assign=True``), so a module built on ``meta`` allocates memory only
    once.
    """
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = checkpoint_shapes(folder)
    compare_keys(folder, expected, found, prefix)
    state: dict[str, torch.Tensor] = {}
    for file in safetensors_files(folder):
        # straight onto the target device, cast there: no second full copy in host memory
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            for key in handle.keys():  # noqa: SIM118
                tensor = handle.get_tensor(key)
                state[key[len(prefix) :]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    module.load_state_dict(state, strict=True, assign=True)
    left = [name for name, p in module.named_parameters() if p.is_meta]
    if left:  # cannot happen after a strict load; a guard against a module that hides parameters
        raise CheckpointError(f"{folder}: parameters left uninitialised after loading: {_listing(left)}")


def detect_prefix(found: Mapping[str, Any], anchor: str, candidates: Iterable[str]) -> str:
    """The first of ``candidates`` for which ``prefix + anchor`` is a checkpoint key (e.g. "" or "model.")."""
    options = list(candidates)
    for prefix in options:
        if prefix + anchor in found:
            return prefix
    tried = ", ".join(repr(p + anchor) for p in options)
    raise CheckpointError(f"checkpoint has none of the keys {tried}; first keys: {_listing(list(found)[:5])}")
