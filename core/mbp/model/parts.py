"""Small pieces of the multiscale decoder: how a coarse stage embeds its units, and what the loss returns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mbp.protocol import PAD


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    """Weighted mean cross-entropy in nats (what to backpropagate)."""
    nats: torch.Tensor
    """Weighted sum of cross-entropy in nats."""
    weight: torch.Tensor
    """Sum of weights (tokens counted)."""

    @property
    def bits_per_byte(self) -> float:
        return float(self.nats / self.weight.clamp_min(1e-12)) / math.log(2)


class UnitEmbedding(nn.Module):
    """Embeds each unit of ``U`` bytes: byte embeddings concatenated, normed and projected to ``dim``."""

    def __init__(self, vocab: int, byte_dim: int, unit: int, dim: int) -> None:
        super().__init__()
        self.bytes = nn.Embedding(vocab, byte_dim, padding_idx=PAD)
        self.norm_in = nn.LayerNorm(unit * byte_dim)
        self.proj = nn.Linear(unit * byte_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, units: torch.Tensor) -> torch.Tensor:  # (..., U) -> (..., D)
        x = self.bytes(units).flatten(-2)
        return self.norm_out(self.proj(self.norm_in(x)))
