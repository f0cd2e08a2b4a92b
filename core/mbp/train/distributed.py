"""torchrun integration on torch's own engine: DDP, or FSDP2 with ``train.strategy: fsdp``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mbp.errors import ConfigError
from mbp.train.optim import TrainingOptimizer


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


RENDEZVOUS = ("RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets besides WORLD_SIZE, and a process group needs to be joined."""


def launched_size() -> int:
    """The processes torchrun started: ``WORLD_SIZE`` when it is over 1, with the rest of torchrun's
    variables; 1 for a plain run, whatever a stray ``RANK`` or ``LOCAL_RANK`` says."""
    given = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(given)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={given!r}: expected a count of processes (torchrun sets it)") from None
    missing = [name for name in RENDEZVOUS if name not in os.environ]
    if size > 1 and missing:
        raise ConfigError(
            f"WORLD_SIZE={size} asks for a distributed run, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} unset: start it with torchrun, or unset WORLD_SIZE "
            "for a single process"
        )
    return max(size, 1)


def speaks_for_run() -> bool:
    """Whether this process prints the run's result: a plain run's one process, or torchrun's rank 0."""
    return launched_size() == 1 or os.environ["RANK"] == "0"


def init_world() -> World:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); a plain run is a world of 1."""
    size = launched_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0")) if size > 1 else 0
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if size == 1:
        return World(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        global _joined
        _joined = True
    return World(dist.get_rank(), size, device)


_joined = False
"""Whether this process has created a process group; see ``joined_a_process_group``."""


def joined_a_process_group() -> bool:
    """Whether this process created a process group. Such a process must end without Python's
    finalization: the group's worker threads outlive ``destroy_process_group`` while a ``DeviceMesh``
    (which FSDP and DTensor's caches keep) still holds the group, and a thread that takes the GIL to free
    a finished collective's tensors during finalization aborts the process (SIGABRT, "terminate called
    without an active exception")."""
    return _joined


def wrap(model: nn.Module, world: World, strategy: str, units: Sequence[nn.Module]) -> nn.Module:
    """DDP, or FSDP2 sharding each of ``units`` (the decoder's ``sharding_units``) and then the rest of
    ``model``. FSDP2 replaces parameters, so optimizers must be made after this."""
    if world.size == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in units:
            fully_shard(unit)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[world.device.index] if world.device.type == "cuda" else None
    )


def all_reduce_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(value)
    return value


def grad_norm(model: nn.Module, clip: float | None) -> torch.Tensor:
    """The gradients' total norm, after clipping them to ``clip`` when it is given; under FSDP the full
    norm over every shard, the same on every process (as under DDP, whose gradients are all-reduced)."""
    from torch.distributed.tensor import DTensor

    if clip:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def broadcast_int(value: int, world: World) -> int:
    """Rank 0's ``value`` on every process."""
    if world.size == 1:
        return value
    held = torch.tensor([value], dtype=torch.long, device=world.device)
    dist.broadcast(held, src=0)
    return int(held.item())


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def sharded(world: World, strategy: str) -> bool:
    return world.size > 1 and strategy == "fsdp"


def _one_torch_optimizer(optimizer: TrainingOptimizer) -> torch.optim.Optimizer:
    """torch's sharded state dicts take one torch optimizer: ``make_optimizer`` gives AdamW under FSDP."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"sharded checkpoints need a torch optimizer, not {type(optimizer).__name__}")
    return optimizer


def full_states(
    model: nn.Module, optimizer: TrainingOptimizer, world: World, strategy: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Unsharded model and optimizer state dicts (a collective under FSDP: every rank calls it). The
    optimizer's comes keyed by parameter index, as in a single process, so checkpoints move freely
    between 1-process, DDP and FSDP runs."""
    if not sharded(world, strategy):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state: dict[str, Any] = dict(get_model_state_dict(model, options=options))
    by_name: dict[str, Any] = dict(
        get_optimizer_state_dict(model, _one_torch_optimizer(optimizer), options=options)
    )
    if not by_name:  # with cpu_offload only rank 0 receives the full states; the others write nothing
        return model_state, {}
    order = [name for group in by_name["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups, start = [], 0
    for group in by_name["param_groups"]:
        groups.append({**group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    return model_state, {"state": {index[n]: v for n, v in by_name["state"].items()}, "param_groups": groups}


def load_optimizer(
    model: nn.Module,
    optimizer: TrainingOptimizer,
    optim_state: dict[str, Any],
    world: World,
    strategy: str,
) -> None:
    if not sharded(world, strategy):
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # torch numbers parameters in the order of the optimizer's groups
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name: dict[str, Any] = {
        "state": {names[i]: v for i, v in optim_state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]} for group in optim_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model,
        _one_torch_optimizer(optimizer),
        optim_state_dict=by_name,
        options=StateDictOptions(full_state_dict=True),
    )
