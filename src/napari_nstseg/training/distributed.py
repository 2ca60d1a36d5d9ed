"""Distributed set-up for torchrun DDP: the process group (nccl on CUDA, gloo on the CPU), where
this process stands (rank, world, device) and the collectives the training loop needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device; rank 0 alone writes files."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (a no-op on one process)."""
        if self.distributed:
            # gloo reduces CPU tensors, nccl CUDA ones: keep the tensor where the backend wants it.
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group from its environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT): nccl on CUDA, gloo on the CPU. One process without those: no group."""
    from napari_nstseg.inference.device import select_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = select_device(device)
    if world <= 1:
        return DistContext(0, 1, chosen, False)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    elif chosen.type != "cpu":
        raise ValueError(f"Distributed training runs on CUDA or the CPU, not on {chosen}.")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), chosen, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """The process group of a training run (:func:`setup_distributed`), left again however the
    run ends."""
    ctx = setup_distributed(device)
    try:
        yield ctx
    finally:
        teardown(ctx)


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does before each
    forward: each rank's last training step updated them with its own batch. Validation then
    runs on the unwrapped module, free of collectives, so ranks may see unequal shards."""
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
