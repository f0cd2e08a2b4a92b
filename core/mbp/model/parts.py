"""Small pieces of the multiscale decoder: how a coarse stage embeds its units, what the loss returns, and
its parameters grouped as training treats them."""

from __future__ import annotations

import math
from collections.abc import Iterable
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


@dataclass(frozen=True)
class ParamGroups:
    """A model's parameters by how training treats them, each list in ``parameters()`` order."""

    decayed: list[nn.Parameter]
    """Matrices (2-D and up): weight decay applies."""
    plain: list[nn.Parameter]
    """Vectors, and the matrices exempted (learned start tokens are embeddings): no weight decay."""
    byte_level: list[nn.Parameter]
    """The trainable weights of the byte-level stage's linear maps, all of them in ``decayed``: what Muon
    orthogonalizes (not, say, a state-space model's 2-D decay rates)."""

    @classmethod
    def of(
        cls, model: nn.Module, *, skip_decay: Iterable[nn.Parameter], byte_level: nn.Module
    ) -> ParamGroups:
        exempt = {id(p) for p in skip_decay}
        linear = {
            id(m.weight) for m in byte_level.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad
        }
        params = list(model.parameters())
        decays = [p.ndim >= 2 and id(p) not in exempt for p in params]
        return cls(
            decayed=[p for p, d in zip(params, decays, strict=True) if d],
            plain=[p for p, d in zip(params, decays, strict=True) if not d],
            byte_level=[p for p in params if id(p) in linear],
        )


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
