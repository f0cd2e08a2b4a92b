"""The optimizer every run uses: AdamW with weight decay on matrices only."""

from __future__ import annotations

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "start_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "start_tokens" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # the fused kernel updates every parameter in one pass (CPU and CUDA); identical arithmetic
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
