"""The Mamba-2 mixer in plain PyTorch, with mamba-ssm's ``Mamba2`` parameter names and shapes, so one
checkpoint loads on CPU and on CUDA (where mamba-ssm's fused kernels run the same weights).

Legend: B batch, L length, D width, E inner width (expand * D), H heads, P head width, N state width,
G groups, K conv kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mbp_mamba.kernels import announce, fused_scan
from mbp_mamba.ssd import ssd_chunked

# causal-conv1d's kernels take these alone; float64 (exact tests, say) runs the PyTorch path.
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class GatedRMSNorm(nn.Module):
    """rmsnorm(x * silu(z)) * weight over each of ``groups`` equal parts of the width, as mamba-ssm's
    RMSNormGated (norm_before_gate=False, group_size = width / groups) and its fused kernel do."""

    def __init__(self, width: int, groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.groups = eps, groups
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = (x * F.silu(z)).unflatten(-1, (self.groups, -1))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x.flatten(-2) * self.weight


class Mamba2(nn.Module):
    def __init__(
        self, dim: int, *, state: int, conv: int, expand: int, headdim: int, groups: int, chunk: int
    ) -> None:
        super().__init__()
        self.inner = expand * dim
        if self.inner % headdim:
            raise ValueError(f"mamba inner width {self.inner} is not divisible by headdim={headdim}")
        self.heads, self.headdim, self.state, self.groups, self.chunk = (
            self.inner // headdim,
            headdim,
            state,
            groups,
            chunk,
        )
        self.conv_width = self.inner + 2 * groups * state
        self.in_proj = nn.Linear(dim, 2 * self.inner + 2 * groups * state + self.heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_width, self.conv_width, conv, groups=self.conv_width, padding=conv - 1
        )
        dt = torch.exp(
            torch.rand(self.heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)
        ).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = GatedRMSNorm(self.inner, groups)
        self.out_proj = nn.Linear(self.inner, dim, bias=False)

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.split(zxbcdt, [self.inner, self.conv_width, self.heads], dim=-1)  # type: ignore[return-value]

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, b, c = torch.split(xbc, [self.inner, self.groups * self.state, self.groups * self.state], dim=-1)
        shape = xbc.shape[:-1]
        x = x.reshape(*shape, self.heads, self.headdim)
        b = b.reshape(*shape, self.groups, self.state)  # each group's heads share them
        c = c.reshape(*shape, self.groups, self.state)
        return x, F.softplus(dt + self.dt_bias), -torch.exp(self.A_log.float()), b, c

    def forward(
        self, u: torch.Tensor, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``u: (B, L, D) -> (B, L, D)``; with ``return_state``, also the conv and SSM states after it
        (the PyTorch path always: the fused kernel returns no states). On CUDA with mamba-ssm installed,
        a plain forward runs its fused kernel on these same weights."""
        if not return_state:
            fused = fused_scan() if u.is_cuda and u.dtype in FUSED_DTYPES else None
            if fused is not None:
                announce("mamba-ssm fused CUDA")
                return self._fused(u, fused)
            announce("PyTorch chunked-SSD")
        length = u.shape[1]
        z, xbc_raw, dt = self._split(self.in_proj(u))
        xbc = F.silu(self.conv1d(xbc_raw.transpose(1, 2))[..., :length].transpose(1, 2))
        x, dt, a, b, c = self._ssm_inputs(xbc, dt)
        y, final = ssd_chunked(x, dt, a, b, c, self.chunk)
        y = y + x * self.D[:, None]
        out = self.out_proj(self.norm(y.reshape(*u.shape[:2], self.inner), z))
        if not return_state:
            return out
        kernel = self.conv1d.kernel_size[0]
        conv_state = (
            F.pad(xbc_raw.transpose(1, 2), (kernel - length, 0))
            if length < kernel
            else xbc_raw.transpose(1, 2)[..., -kernel:]
        )
        return out, conv_state, final

    def _fused(self, u: torch.Tensor, kernel: Callable[..., Any]) -> torch.Tensor:
        """``forward`` as mamba-ssm's one fused kernel: in-projection, conv, scan, gated norm and
        out-projection, with this mixer's parameters."""
        return cast(
            torch.Tensor,
            kernel(
                self.in_proj(u),
                self.conv1d.weight[:, 0],
                self.conv1d.bias,
                self.dt_bias,
                -torch.exp(self.A_log.float()),
                D=self.D,
                chunk_size=256,
                activation="silu",
                rmsnorm_weight=self.norm.weight,
                rmsnorm_eps=self.norm.eps,
                outproj_weight=self.out_proj.weight,
                outproj_bias=None,
                headdim=self.headdim,
                ngroups=self.groups,
                norm_before_gate=False,
            ),
        )

    def step(
        self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One position for every row: ``u: (B, D)``; returns output and the new states."""
        z, xbc, dt = self._split(self.in_proj(u))
        conv_state = torch.cat((conv_state[..., 1:], xbc[..., None]), dim=-1)  # (B, conv_width, K)
        bias = self.conv1d.bias
        assert bias is not None  # conv1d is built with a bias, as in mamba-ssm
        xbc = F.silu((conv_state * self.conv1d.weight[:, 0]).sum(-1) + bias)
        x, dt, a, b, c = self._ssm_inputs(xbc, dt)
        b, c = (t.repeat_interleave(self.heads // self.groups, dim=-2) for t in (b, c))  # (B, H, N)
        decay = torch.exp(dt * a)  # (B, H)
        ssm_state = ssm_state * decay[..., None, None] + (dt[..., None] * x)[..., None] * b[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", ssm_state, c) + x * self.D[:, None]
        return self.out_proj(self.norm(y.reshape(len(u), self.inner), z)), conv_state, ssm_state
