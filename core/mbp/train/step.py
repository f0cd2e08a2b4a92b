"""One training step: the only place that accumulates gradients, clips them and updates the weights.

``Trainer`` steps the run with it and the step timer (:mod:`mbp.planning.steptime`) times it, so that what
a plan measures is the step the run takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mbp.data.batches import Batch
from mbp.model.decoder import MultiscaleDecoder
from mbp.train import distributed
from mbp.train.optim import TrainingOptimizer
from mbp.train.precision import PrecisionChoice

Settle = Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]
"""Reads a step's mean loss and gradient norm off the device, before the optimizer applies the step; it
may refuse the step by raising."""


@dataclass(frozen=True)
class StepResult:
    loss: float
    """The mean loss over the step's micro-batches."""
    grad_norm: float
    """The gradients' total norm before clipping."""
    tokens: int
    """Bytes trained on this process."""


class LossStep(nn.Module):
    """The model's loss as a forward(), so DDP and FSDP hooks see it and synchronise gradients."""

    def __init__(self, model: MultiscaleDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, begins: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids, weights, begins).loss


def read_together(loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, float]:
    """The loss and the gradient norm in one transfer from the device."""
    loss_value, norm_value = torch.stack([loss, norm.float()]).tolist()
    return loss_value, norm_value


def train_step(
    loss_of: nn.Module,
    model: nn.Module,
    optimizer: TrainingOptimizer,
    micro_batches: Sequence[Batch],
    precision: PrecisionChoice,
    clip: float | None,
    settle: Settle = read_together,
) -> StepResult:
    """One optimizer step over ``micro_batches`` (their mean loss, as one batch of them all would give):
    ``loss_of`` (``LossStep``, or it wrapped for DDP/FSDP) gives each batch's loss under ``precision``'s
    autocast; the gradients of ``model`` are clipped to ``clip`` when it is given, and ``settle`` reads
    the loss and norm before ``optimizer`` applies them. The learning rate is the caller's to set."""
    device = next(model.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    losses, tokens = [], 0
    for batch in micro_batches:
        ids, weights = batch.tokens.to(device), batch.weights.to(device)
        begins = batch.begins.to(device)
        with precision.autocast(device):
            loss = loss_of(ids, weights, begins)
        (loss / len(micro_batches)).backward()
        losses.append(loss.detach().float())
        tokens += batch.num_tokens
    loss_value, norm_value = settle(torch.stack(losses).mean(), distributed.grad_norm(model, clip))
    optimizer.step()
    return StepResult(loss_value, norm_value, tokens)
