"""Data parallelism across processes: ``torchrun --nproc_per_node=N -m harness run …`` (and SLURM tasks).

Owns: joining the process group (NCCL on GPUs, gloo on CPUs) from the environment torchrun or SLURM sets, the
local GPU of each rank, and the few collectives the encode engine needs (broadcast a decision from rank 0, gather
shards on rank 0, a barrier). Must not know what is encoded or scored: the engine decides which shards a rank
encodes; the run path decides that only rank 0 scores and writes.

Every rank runs the same run path (same tasks, same mteb calls, in the same order), so every encode call is met
by all ranks; inside it each rank encodes its share of the length-sorted shards and rank 0 ends with all of
them. A single process (no ``WORLD_SIZE``, or 1) never touches ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, position: int) -> bool:
        """Round-robin: item ``position`` of a work list belongs to rank ``position % world_size``. Shards are
        length-sorted, so round-robin gives every rank a similar mix of long and short texts."""
        return position % self.world_size == self.rank

    # -- collectives (no-ops in a single process) --------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


_CONTEXT: DistContext | None = None


def _env_int(names: Sequence[str]) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def _export_slurm_env() -> None:
    """Under ``srun`` / submitit with several tasks and no torchrun, derive torch's variables from SLURM's."""
    if os.environ.get("WORLD_SIZE") or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        log.warning("SLURM_NTASKS > 1 but submitit is not installed: running each task as a single process")
        return
    TorchDistributedEnvironment().export(overwrite=False)


def setup(device_type: str | None = None, timeout_s: float = 3600.0) -> DistContext:
    """Join the process group once (idempotent) and pin this rank's GPU; a single process gets rank 0 of 1.

    ``device_type``: "cuda" or "cpu" (None: cuda when available). NCCL for CUDA (object collectives then travel
    through this rank's GPU), gloo otherwise.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    _export_slurm_env()
    world = _env_int(["WORLD_SIZE"]) or 1
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    rank = _env_int(["RANK"]) or 0
    local_rank = _env_int(["LOCAL_RANK"]) or 0
    use_cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    import torch.distributed as dist

    if use_cuda:
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU, for every model load after this
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=dist.get_backend())
    log.info("distributed: rank %d of %d (local rank %d, backend %s)", rank, world, local_rank, _CONTEXT.backend)
    return _CONTEXT


def context() -> DistContext:
    """The current context (a single process until ``setup`` has joined a group)."""
    return _CONTEXT or DistContext()


def teardown() -> None:
    global _CONTEXT
    if _CONTEXT is not None and _CONTEXT.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CONTEXT = None
