"""``torchrun`` support shared by the trainers: with ``WORLD_SIZE`` > 1 every process joins one
process group (NCCL on GPUs, gloo on CPUs), and every collective goes through
:class:`DistContext`, which hands the process group tensors on its device (NCCL reduces CUDA
tensors only) and gives the result back where the caller's tensor lives."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this call initialised the process group and tears it down
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the process group's collectives take their tensors."""

    @classmethod
    def setup(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, owned, device)

    @classmethod
    def run(cls, train: Callable[[DistContext], T]) -> T:
        """``train(ctx)`` inside the process group: set up before, torn down after (a failed
        rank skips the final barrier, which the others might never reach)."""
        ctx = cls.setup()
        finished = False
        try:
            result = train(ctx)
            finished = True
            return result
        finally:
            ctx.close(finished)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over the ranks, on ``values``' device."""
        if self.world == 1:
            return values
        reduced = values.to(self.device, copy=True)
        dist.all_reduce(reduced)
        return reduced.to(values.device)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self, finished: bool) -> None:
        if self.world > 1:
            if finished:  # after a failure the other ranks may never arrive
                dist.barrier()
            if self.owned:
                dist.destroy_process_group()
