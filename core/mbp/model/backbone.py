"""The contract every backbone (sequence block) fulfils, and the fallbacks the core supplies.

Shapes: B batch, L length, D width.

- ``forward(x: (B, L, D)) -> (B, L, D)``: strictly causal (output t depends on inputs <= t only).
- ``allocate_cache(batch, max_len) -> cache``: inference state for ``batch`` rows; ``cache.reset(rows)``
  empties the rows selected by a bool mask (B,).
- ``step(x: (B, D), cache, active: (B,) bool) -> (B, D)``: advance only the ``active`` rows by one
  position; other rows keep their state (their outputs are meaningless).
- optional ``prefill(x: (R, L, D), cache, rows: (R,) long) -> (R, L, D)``: fill the state of the rows
  ``rows`` from whole sequences of one length at once; without it the core steps them position by
  position.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Cache(Protocol):
    def reset(self, rows: torch.Tensor) -> None: ...


@runtime_checkable
class Backbone(Protocol):
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def allocate_cache(self, batch: int, max_len: int) -> Any: ...

    def step(self, x: torch.Tensor, cache: Any, active: torch.Tensor) -> torch.Tensor: ...


def prefill(backbone: Any, x: torch.Tensor, cache: Any, rows: torch.Tensor) -> torch.Tensor:
    """Fill ``rows: (R,)`` of ``cache`` with the sequences ``x: (R, L, D)``; returns the outputs."""
    if hasattr(backbone, "prefill"):
        return backbone.prefill(x, cache, rows)
    batch = _cache_batch(cache)
    active = torch.zeros(batch, dtype=torch.bool, device=x.device)
    active[rows] = True
    outputs = []
    for t in range(x.shape[1]):
        wide = x.new_zeros(batch, x.shape[-1])
        wide[rows] = x[:, t]
        outputs.append(backbone.step(wide, cache, active)[rows])
    return torch.stack(outputs, dim=1) if outputs else x[:, :0]


def _cache_batch(cache: Any) -> int:
    batch = getattr(cache, "batch", None)
    if batch is None:
        raise TypeError("a backbone without prefill() must give its cache a 'batch' attribute")
    return int(batch)


class Identity(torch.nn.Module):
    """A zero-layer backbone: what a stage with ``layers: 0`` runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def allocate_cache(self, batch: int, max_len: int) -> _NoCache:
        return _NoCache(batch)

    def step(self, x: torch.Tensor, cache: Any, active: torch.Tensor) -> torch.Tensor:
        return x

    def prefill(self, x: torch.Tensor, cache: Any, rows: torch.Tensor) -> torch.Tensor:
        return x


class _NoCache:
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def reset(self, rows: torch.Tensor) -> None:
        pass
