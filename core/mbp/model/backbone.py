"""The contract every backbone (sequence block) fulfils, and the fallbacks the core supplies.

Shapes: B batch, L length, D width.

- ``forward(x: (B, L, D)) -> (B, L, D)``: strictly causal (output t depends on inputs <= t only).
- ``allocate_cache(batch, max_len) -> Cache``: inference state for ``batch`` rows (``cache.batch``);
  ``cache.reset(rows)`` empties the rows selected by a bool mask (B,).
- ``step(x: (B, D), cache, active: (B,) bool) -> (B, D)``: advance only the ``active`` rows by one
  position; other rows keep their state (their outputs are meaningless).
- optional ``prefill(x: (R, L, D), cache, rows: (R,) long) -> (R, L, D)``: fill the state of the rows
  ``rows`` from whole sequences of one length at once, replacing what they held; without it the core
  resets those rows and steps them position by position.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Cache(Protocol):
    """Inference state of ``batch`` rows, made by ``Backbone.allocate_cache``.

    Its tensors follow the dtype and device of the backbone's parameters (allocate them like
    ``weight.new_zeros(...)``), so a model moved with ``.to()`` or ``.double()`` generates in kind.
    """

    @property
    def batch(self) -> int:
        """Rows: the core's step-by-step prefill fallback needs it to widen a step to every row."""
        ...

    def reset(self, rows: torch.Tensor) -> None:
        """Empty the rows selected by the bool mask ``rows: (B,)``; the other rows keep their state."""
        ...


@runtime_checkable
class Backbone(Protocol):
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def allocate_cache(self, batch: int, max_len: int) -> Cache: ...

    # ``cache`` is whatever this backbone's allocate_cache made (each backbone narrows it to its own type)
    def step(self, x: torch.Tensor, cache: Any, active: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PrefillBackbone(Backbone, Protocol):
    """A backbone with the optional ``prefill``."""

    def prefill(self, x: torch.Tensor, cache: Any, rows: torch.Tensor) -> torch.Tensor: ...


def prefill(backbone: Backbone, x: torch.Tensor, cache: Cache, rows: torch.Tensor) -> torch.Tensor:
    """Make ``rows: (R,)`` of ``cache`` hold the sequences ``x: (R, L, D)``; returns the outputs."""
    if isinstance(backbone, PrefillBackbone):
        return backbone.prefill(x, cache, rows)
    active = torch.zeros(cache.batch, dtype=torch.bool, device=x.device)
    active[rows] = True
    cache.reset(active)  # a prefill replaces a row's state, as the backbones' own prefills do
    outputs = []
    for t in range(x.shape[1]):
        wide = x.new_zeros(cache.batch, x.shape[-1])
        wide[rows] = x[:, t]
        outputs.append(backbone.step(wide, cache, active)[rows])
    return torch.stack(outputs, dim=1) if outputs else x[:, :0]


class Identity(torch.nn.Module):
    """A zero-layer backbone: what a stage with ``layers: 0`` runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def allocate_cache(self, batch: int, max_len: int) -> _NoCache:
        return _NoCache(batch)

    def step(self, x: torch.Tensor, cache: _NoCache, active: torch.Tensor) -> torch.Tensor:
        return x

    def prefill(self, x: torch.Tensor, cache: _NoCache, rows: torch.Tensor) -> torch.Tensor:
        return x


class _NoCache:
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def reset(self, rows: torch.Tensor) -> None:
        pass
