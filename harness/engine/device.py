"""Device and dtype resolution: ``auto`` picks CUDA when present; a dtype may be given per device type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from harness.errors import ConfigError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device={device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here (use device=cpu or auto)")
    return dev


def resolve_dtype(dtype: str | Mapping[str, Any] | None, device: torch.device) -> torch.dtype:
    """``dtype`` is a name, or a mapping ``{cpu: float32, cuda: bfloat16}``; None means float32."""
    if isinstance(dtype, Mapping):
        dtype = dtype.get(device.type, dtype.get("default"))
    if dtype in (None, "", "auto"):
        return torch.float32
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ConfigError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
