"""torch.distributed under torchrun: process-group set-up from the environment, rank helpers, reductions.

One code path serves one process and N: with ``WORLD_SIZE`` unset (or 1) every helper is a no-op or the
identity, so the single-process trainer runs no collective at all. Under torchrun the group uses NCCL on
CUDA and gloo on CPU. Every helper here is a collective when the group is on: all ranks must call it at the
same point of the program, or the job hangs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); one process otherwise.

    Idempotent: a second call returns the group that is already up.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)  # NCCL binds each rank to its own GPU before the first collective
        timeout = timedelta(seconds=timeout_s)
        store, rank, world = attempt_store(timeout)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world, timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def attempt_store(timeout: timedelta) -> tuple[dist.Store, int, int]:
    """torchrun's env:// store, with keys private to this attempt of the job.

    torchrun's agent keeps one store for all restarts, and the default group writes the same keys on every
    attempt (each rank's gloo/NCCL address): without a per-attempt prefix a restarted rank can read a dead
    peer's address from the previous attempt and fail to connect (pytorch/pytorch#167288).
    """
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"fastmbr/attempt-{restart_count()}", store), rank, world


def restart_count() -> int:
    """How many times torchrun has restarted this job's workers (0 on the first attempt and outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise max over ranks, enqueued on the device (no host read)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def any_rank(flags: torch.Tensor, info: DistInfo) -> list[bool]:
    """Element-wise OR of a small flag vector over all ranks: every rank gets the same decisions back."""
    counts = all_reduce_sum(flags.to(torch.float32), info)
    return [bool(c > 0) for c in counts.tolist()]


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` as a list indexed by rank (on every rank)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """``obj`` from rank ``src`` on every rank (the others' argument is ignored)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, info: DistInfo, src: int = 0) -> None:
    """Make every rank's buffers (BatchNorm running statistics) rank ``src``'s.

    DDP broadcasts buffers at the start of each forward, so after the last training step each rank holds
    rank 0's statistics plus its own last batch; evaluation and checkpoints must see one set.
    """
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def rank_seed(seed: int, rank: int) -> int:
    """An independent 63-bit seed for ``rank`` derived from the run's one seed (SeedSequence spawning)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0]) >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
