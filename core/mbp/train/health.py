"""A diverging run stops at its step, on every process: before the optimizer applies a non-finite loss
or gradient norm, and before a non-finite tensor is saved, naming the step and the last finite
checkpoint (``mbp.train.watch.diverged``, which the caller's ``Stop`` raises)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mbp.train import distributed
from mbp.train.checkpoint import first_nonfinite
from mbp.train.optim import TrainingOptimizer
from mbp.train.watch import DivergedError

Stop = Callable[[str], DivergedError]
"""The error that stops a run, given what is not finite."""


def agreed_finite(
    loss: torch.Tensor,
    norm: torch.Tensor,
    world: distributed.World,
    stop: Stop,
) -> tuple[float, float]:
    """The step's loss and gradient norm, read in the step's one transfer from the device; a non-finite
    one on any process stops every process (``stop``'s error)."""
    health = torch.stack([loss, norm.float()])
    agreed = distributed.all_reduce_sum(health.clone(), world) if world.size > 1 else health
    values = torch.cat([health, agreed]).tolist()
    if not all(map(math.isfinite, values)):
        raise stop(f"loss {values[0]:g}, gradient norm {values[1]:g}")
    return values[0], values[1]


def finite_states(
    model: nn.Module,
    optimizer: TrainingOptimizer,
    world: distributed.World,
    strategy: str,
    stop: Stop,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full model and optimizer states (on rank 0), every process stopping (``stop``'s error) where
    one of their tensors is not finite."""
    model_state, optim_state = distributed.full_states(model, optimizer, world, strategy)
    bad = first_nonfinite(model_state, optim_state) if world.is_main else None
    if distributed.broadcast_int(int(bad is not None), world):  # rank 0 holds the full states
        raise stop(f"{bad or 'a tensor'} is not finite")
    return model_state, optim_state
