"""Ops for the tiny (B, D) tensors of generation steps, where fixed per-call costs dominate. Public:
plugin authors reach them as ``mbp.api.small_tensor_ops`` and may use them in their own ``step`` code.

On this scale a Python scalar operand costs an extra tensor wrap per op and some fused kernels (exact
GELU, RMSNorm) pay setup costs several times the arithmetic; the written-out forms below use cached
0-dim constants and cheap elementwise kernels instead. Results match the fused kernels to rounding.
"""

from __future__ import annotations

import math
from functools import cache

import torch

SMALL = 1 << 14
"""Element counts up to which the forms below beat the fused kernels."""


@cache
def constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # an inference tensor, once cached, would break later autograd
        return torch.tensor(value, dtype=dtype, device=device)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, ``x/2 * (1 + erf(x/sqrt 2))``."""
    half = x * constant(0.5, x.dtype, x.device)
    return torch.addcmul(half, half, torch.erf(x * constant(1 / math.sqrt(2), x.dtype, x.device)))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    mean_square = torch.addcmul(
        constant(eps, x.dtype, x.device),
        (x * x).sum(-1, keepdim=True),
        constant(1 / x.shape[-1], x.dtype, x.device),
    )
    return x * torch.rsqrt(mean_square) * weight
