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
- optional ``forward_segments(x: (B, L, D), segments: (B, L) long) -> (B, L, D)``: ``forward`` where
  position t sees only positions <= t with the same segment number (numbers never decrease along a
  row); it keeps packed samples apart. Without it the core runs each segment as a sequence of its own.
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


@runtime_checkable
class SegmentedBackbone(Protocol):
    """A backbone with the optional ``forward_segments``."""

    def forward_segments(self, x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor: ...


def run_segments(backbone: torch.nn.Module, x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``backbone`` over ``x: (B, L, D)`` with each run of equal ``segments: (B, L)`` kept apart.

    The fallback makes every segment a row of its own, right-padded: a causal backbone's outputs never
    depend on what follows, so each segment's outputs are exactly those of running it alone. Segments
    go in batches of similar length (up to a power of two), so padding at most doubles the work.
    """
    if isinstance(backbone, SegmentedBackbone):
        return backbone.forward_segments(x, segments)
    batch, length, width = x.shape
    flat = x.flatten(0, 1)
    # a number per (row, segment), increasing along the flattened rows
    labels = (segments + torch.arange(batch, device=x.device)[:, None] * (length + 1)).flatten()
    _, which, counts = torch.unique_consecutive(labels, return_inverse=True, return_counts=True)
    where = torch.arange(labels.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[which]
    buckets = torch.ceil(torch.log2(counts.double())).long()
    out: torch.Tensor | None = None
    for bucket in buckets.unique().tolist():
        chosen = buckets == bucket  # the segments of this bucket
        members = chosen[which].nonzero().flatten()  # their positions
        row = (torch.cumsum(chosen, 0) - 1)[which[members]]
        rows = flat.new_zeros(int(chosen.sum()), int(counts[chosen].max()), width)
        rows = rows.index_put((row, where[members]), flat[members])
        outputs = backbone(rows)[row, where[members]]
        # the outputs' dtype, not the input's: under autocast a backbone may return bf16 from fp32
        out = outputs.new_zeros(len(flat), outputs.shape[-1]) if out is None else out
        out = out.index_put((members,), outputs.to(out.dtype))
    return x.clone() if out is None else out.view(batch, length, -1)  # None: x holds no positions


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
