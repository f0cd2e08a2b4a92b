"""RMSNorm that stays cheap on the tiny tensors of generation steps (see
:mod:`mbp.model.small_tensor_ops`); the fused kernel runs on training tensors. The parameter is named
``weight`` like torch.nn.RMSNorm's, so checkpoints are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mbp.model import small_tensor_ops as small


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > small.SMALL or torch.is_autocast_enabled(x.device.type):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return small.rms_norm(x, self.weight, self.eps)
