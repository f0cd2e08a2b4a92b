"""Where each row of a KV cache writes and what it sees in one generation step.

A backbone whose cache keeps keys and values by position, rows advancing independently (a row sits a step
out while other rows of its batch prefill or finish), asks a ``KVPlanner`` once per step for a ``KVPlan``
and shares it across its layers.

Legend: B rows, H heads, T cache capacity, S slots any row can see, K head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SMALL_ATTENTION = 1 << 16
"""Cache sizes (B x H x S x K) up to which one step's attention runs as a broadcast product: at generation's
small shapes a product and a sum cost less than SDPA's fixed per-call work."""


def small_attention(keys: torch.Tensor) -> bool:
    """Whether one step's attention over ``keys: (B, H, S, K)`` runs as a broadcast product."""
    return keys.numel() <= SMALL_ATTENTION


@dataclass(frozen=True)
class KVPlan:
    """One step's positions: computed once per step, not once per layer."""

    rows: torch.Tensor  # (B,) row indices
    slot: torch.Tensor  # (B,) cache slot each row writes: its position
    span: int  # cache slots any row can see
    visible: torch.Tensor | None  # (B, S) bool, None when every row sits at the same position
    active: torch.Tensor | None  # (B,) rows that advance, None when all do

    def write(self, store: torch.Tensor, new: torch.Tensor) -> None:
        """Write ``new: (B, H, K)`` into ``store: (B, H, T, K)`` at each row's slot; a row sitting this step
        out keeps what its slot holds."""
        if self.active is None:
            store[self.rows, :, self.slot] = new
        else:
            keep = self.active[:, None, None]
            store[self.rows, :, self.slot] = torch.where(keep, new, store[self.rows, :, self.slot])


class KVPlanner:
    """Plans steps of a cache of ``batch`` rows and ``capacity`` positions; keeps the index tensors every
    plan uses, made once per cache instead of once per step."""

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.rows = torch.arange(batch, device=device)
        self.positions = torch.arange(capacity, device=device)

    def plan(self, lengths: torch.Tensor, active: torch.Tensor) -> KVPlan:
        """The plan for rows filled to ``lengths: (B,)`` of which ``active: (B,)`` advance. Raises
        RuntimeError when an advancing row has no slot left."""
        everyone = bool(active.all())
        # rows sitting out may be full; they write nothing
        slot = lengths if everyone else lengths.clamp(max=self.capacity - 1)
        low, high = (int(v) for v in torch.aminmax(slot))
        top = high if everyone else int(lengths[active].max()) if bool(active.any()) else 0
        if top >= self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded")
        # rows at different positions must not see the stale slots beyond their own
        visible = None if low == high else self.positions[: high + 1] <= slot[:, None]
        return KVPlan(self.rows, slot, high + 1, visible, None if everyone else active)
