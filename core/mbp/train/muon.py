"""Muon (Jordan et al., 2024): SGD momentum whose update is orthogonalized by Newton-Schulz iterations,
for the byte-level stage's matrices, beside fused AdamW for every other parameter.

Why the byte-level stage only: orthogonalizing a matrix costs about ``20 x rows x cols x min(rows,
cols)`` operations a step, whatever the batch, while training it costs ``6 x rows x cols`` per
position it sees. The byte-level stage sees every byte (2,304 positions a step in ``lm-text``), so
Muon adds a sixth to its cost; a patch-level stage sees one position in ``patch`` (256), and Muon there
would cost more than training it. Measured on King James at a 4-minute budget, 2-core AMD EPYC, fp32:
AdamW everywhere 2.167 bits per byte (785 steps), Muon on every matrix 2.223 (535 steps), Muon on the
byte-level stage's 2.128 (692 steps).

Why not ``torch.optim.Muon``: it arrived in torch 2.9 (mbp supports 2.5), and it orthogonalizes in
bf16, which a CPU without AMX or AVX512-BF16 emulates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
"""The quintic iteration's coefficients (Jordan et al.): steepest at zero, so that five steps bring
every singular value into about [0.7, 1.2]; exact orthogonality is not needed."""


def orthogonalized(updates: torch.Tensor, steps: int) -> torch.Tensor:
    """``updates: (N, rows, cols)`` with each matrix's singular values moved near 1 (its U V^T, about)."""
    a, b, c = NEWTON_SCHULZ
    tall = updates.shape[1] > updates.shape[2]
    x = updates.transpose(1, 2) if tall else updates  # the Gram matrix on the short side is the cheap one
    # the spectral norm is at most the Frobenius norm: every singular value starts in [0, 1]
    x = x / (torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.transpose(1, 2) if tall else x


def update_scale(shape: torch.Size) -> float:
    """An orthogonalized update's factor that gives it the RMS of a typical AdamW update (Liu et al.,
    2025, "Muon is scalable"), so that one learning rate and weight decay serve both optimizers."""
    return 0.2 * math.sqrt(max(shape[0], shape[1]))


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalized, with decoupled weight decay; for 2-D parameters only. The
    iterations run in fp32 on every device: bf16 is emulated on CPUs without bf16 products, and fp32 keeps
    a step the same on any hardware."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_steps": ns_steps}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon updates matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            # matrices of one shape are orthogonalized together: one batched product per iteration
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                by_shape[p.shape].append((p, p.grad.lerp(buffer, momentum)))
            for shape, pairs in by_shape.items():
                stacked = torch.stack([update for _, update in pairs]).float()
                directions = orthogonalized(stacked, group["ns_steps"])
                for (p, _), direction in zip(pairs, directions, strict=True):
                    p.mul_(1 - lr * decay).add_(direction.to(p.dtype), alpha=-lr * update_scale(shape))
        return loss


class MuonWithAdamW:
    """Two optimizers stepped as one: ``param_groups`` lists Muon's groups first, so a schedule that sets
    every group's ``lr`` reaches both, and ``state_dict`` numbers parameters across both in that order
    (one index-keyed dict, as a single torch optimizer writes, which checkpoints store)."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def _muon_count(self) -> int:
        return sum(len(group["params"]) for group in self.muon.param_groups)

    def state_dict(self) -> dict[str, Any]:
        first, second = self.muon.state_dict(), self.adamw.state_dict()
        offset = self._muon_count()
        shifted = [{**g, "params": [i + offset for i in g["params"]]} for g in second["param_groups"]]
        return {
            "state": {**first["state"], **{i + offset: s for i, s in second["state"].items()}},
            "param_groups": first["param_groups"] + shifted,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups, count, offset = state_dict["param_groups"], len(self.muon.param_groups), self._muon_count()
        ours = len(groups) == count + len(self.adamw.param_groups)
        if not ours or any("ns_steps" not in g for g in groups[:count]):
            raise ValueError("the saved optimizer state is not Muon's and AdamW's for these parameters")
        state = state_dict["state"]
        self.muon.load_state_dict(
            {"state": {i: s for i, s in state.items() if i < offset}, "param_groups": groups[:count]}
        )
        self.adamw.load_state_dict(
            {
                "state": {i - offset: s for i, s in state.items() if i >= offset},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in groups[count:]],
            }
        )
