"""RMSNorm with a written-out backward for training tensors, and a cheap form for the tiny tensors of
generation steps (see :mod:`mbp.model.small_tensor_ops`). The parameter is named ``weight`` like
torch.nn.RMSNorm's, so checkpoints are interchangeable.

torch's ``rms_norm`` on CPU is a composite of six elementwise ops, and autograd runs each one's backward
(another dozen passes over the tensor): at a local stage's width of 128 the norms were a third of a bf16
training step (removing them made the benchmark step 230 -> 165 ms). ``RMSNormFunction`` makes one
reduction and two passes forward and five backward, saving only the input and the per-row scale.
"""

from __future__ import annotations

from typing import Any

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
        device = x.device.type
        if device != "cpu":  # other devices fuse torch's kernel well
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        if torch.is_autocast_enabled(device):
            # the next op is a product that would cast to the autocast dtype: cast once, here
            return rms_norm(x, self.weight, self.eps, torch.get_autocast_dtype(device))
        if x.numel() > small.SMALL:
            return rms_norm(x, self.weight, self.eps, x.dtype)
        return small.rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in fp32 or wider, as
    ``out_dtype``."""
    return RMSNormFunction.apply(x, weight, eps, out_dtype)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype
    ) -> torch.Tensor:
        # a norm reads x once and writes no x-sized temporary, unlike x.pow(2).mean()
        compute = torch.promote_types(x.dtype, torch.float32)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=compute)
        scale = torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps))
        y = (x * scale).mul_(weight)
        ctx.save_for_backward(x, weight, scale)
        return y if y.dtype == out_dtype else y.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, scale = ctx.saved_tensors
        normed = x * scale  # fp32: recomputed rather than saved, one pass against a tensor kept alive
        weight_grad = None
        if ctx.needs_input_grad[1]:
            weight_grad = (grad * normed).flatten(0, -2).sum(0).to(weight.dtype)
        if not ctx.needs_input_grad[0]:
            return None, weight_grad, None, None
        # d/dx of normed * w: scale * (g - normed * mean(g * normed)), with g = grad * w
        g = grad * weight.to(normed.dtype)  # fp32 even when grad and weight are bf16
        mean = torch.linalg.vecdot(g, normed).unsqueeze(-1).div_(x.shape[-1])
        x_grad = torch.addcmul(g, normed, mean, value=-1).mul_(scale)
        return x_grad.to(x.dtype), weight_grad, None, None
