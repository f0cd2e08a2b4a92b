"""The ``mamba`` backbone: pre-norm residual Mamba-2 layers and a recurrent cache for generation."""

from __future__ import annotations

from typing import cast

import torch
from mbp.api import RMSNorm
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mbp_mamba.mixer import Mamba2


class MambaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: int = Field(default=64, gt=0, description="SSM state width N (mamba-ssm d_state)")
    conv: int = Field(default=4, gt=0, description="depthwise conv kernel (d_conv)")
    expand: int = Field(default=2, gt=0)
    headdim: int = Field(default=32, gt=0)
    groups: int = Field(default=1, gt=0, description="B/C groups (ngroups)")
    chunk: int = Field(default=64, gt=0, description="chunk length of the PyTorch SSD scan")


class MambaCache:
    """Per layer: conv state (B, conv width, K) and SSM state (B, H, P, N)."""

    def __init__(self, layers: list[Mamba2], batch: int, like: torch.Tensor) -> None:
        self.batch = batch
        self.conv = [like.new_zeros(batch, m.conv_width, m.conv1d.kernel_size[0]) for m in layers]
        self.ssm = [like.new_zeros(batch, m.heads, m.headdim, m.state) for m in layers]

    def reset(self, rows: torch.Tensor) -> None:
        for states in (self.conv, self.ssm):
            for index, state in enumerate(states):
                mask = rows.view(-1, *([1] * (state.ndim - 1)))
                states[index] = torch.where(mask, torch.zeros_like(state), state)


class MambaLayer(nn.Module):
    def __init__(self, dim: int, params: MambaParams) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps=1e-5)
        self.mixer: Mamba2 = Mamba2(
            dim,
            state=params.state,
            conv=params.conv,
            expand=params.expand,
            headdim=params.headdim,
            groups=params.groups,
            chunk=params.chunk,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))

    def prefill(self, x: torch.Tensor, cache: MambaCache, index: int, rows: torch.Tensor) -> torch.Tensor:
        """``forward`` over ``x: (R, L, D)`` that also sets layer ``index``'s states of ``rows``."""
        out, conv_state, ssm_state = self.mixer(self.norm(x), return_state=True)
        cache.conv[index][rows] = conv_state.to(cache.conv[index].dtype)  # bf16 under autocast
        cache.ssm[index][rows] = ssm_state.to(cache.ssm[index].dtype)
        return x + out

    def step(self, x: torch.Tensor, cache: MambaCache, index: int, active: torch.Tensor) -> torch.Tensor:
        """``forward`` for one position per row, ``x: (B, D)``; rows not ``active`` keep their states."""
        out, conv_state, ssm_state = self.mixer.step(self.norm(x), cache.conv[index], cache.ssm[index])
        cache.conv[index] = torch.where(active[:, None, None], conv_state, cache.conv[index])
        cache.ssm[index] = torch.where(active[:, None, None, None], ssm_state, cache.ssm[index])
        return x + out


class Mamba(nn.Module):
    def __init__(self, params: MambaParams, *, dim: int, layers: int) -> None:
        super().__init__()
        self.params = params
        self.layers = nn.ModuleList(MambaLayer(dim, params) for _ in range(layers))
        self.norm = RMSNorm(dim, eps=1e-5)

    def _blocks(self) -> list[MambaLayer]:
        return cast(list[MambaLayer], list(self.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._blocks():
            x = layer(x)
        return self.norm(x)

    def allocate_cache(self, batch: int, max_len: int) -> MambaCache:
        return MambaCache([layer.mixer for layer in self._blocks()], batch, self.norm.weight.detach())

    def prefill(self, x: torch.Tensor, cache: MambaCache, rows: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self._blocks()):
            x = layer.prefill(x, cache, index, rows)
        return self.norm(x)

    def step(self, x: torch.Tensor, cache: MambaCache, active: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self._blocks()):
            x = layer.step(x, cache, index, active)
        return self.norm(x)
