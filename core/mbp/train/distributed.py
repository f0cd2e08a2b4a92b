"""torchrun integration on torch's own engine: DDP, or FSDP2 with ``train.strategy: fsdp``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); a plain run is a world of 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if size == 1:
        return World(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), size, device)


def wrap(model: nn.Module, world: World, strategy: str) -> nn.Module:
    if world.size == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for backbone in getattr(model, "backbones", []):
            fully_shard(backbone)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[world.device.index] if world.device.type == "cuda" else None
    )


def all_reduce_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(value)
    return value


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
