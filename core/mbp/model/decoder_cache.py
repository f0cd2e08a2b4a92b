"""The inference state of a :class:`~mbp.model.decoder.MultiscaleDecoder`, one row per sequence.

Legend as in decoder.py: B rows, T capacity in tokens, n stages, P_s patch size, D_s stage width.
"""

from __future__ import annotations

import torch

from mbp.boundaries import PatchPlacer
from mbp.model.backbone import Cache


class DecoderCache:
    """Per row, every token consumed; per stage, its backbone's cache and how many units its current
    sequence holds; per stage but the last, its latest output projected as the next stage's inputs.

    Made by ``MultiscaleDecoder.allocate_cache`` and changed only by its ``prefill`` and ``step``.
    """

    def __init__(
        self,
        caches: list[Cache],
        history: torch.Tensor,
        projected: list[torch.Tensor],
        placers: list[PatchPlacer] | None = None,
    ) -> None:
        batch, device = history.shape[0], history.device
        self.caches = caches
        self.history = history
        """(B, T) tokens consumed, PAD beyond: a coarse stage embeds the unit that just completed."""
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        """(B,) tokens consumed."""
        self.counts = [torch.zeros(batch, dtype=torch.long, device=device) for _ in caches]
        """Per stage (B,): units in the stage's current sequence, its start token not counted."""
        self.projected = projected
        """Per stage s < n - 1 (B, P_{s+1}, D_{s+1}): what stage s+1 adds to its inputs, by position."""
        self.placers = placers
        """Per row, where byte-level patches start (``mbp.model.varying_steps``); None: fixed patches.
        With placers, ``history`` and ``lengths`` count grid positions: each patch at the start of a
        slot of the last stage's ``seq_len``, PAD after it."""
        self.rows = torch.arange(batch, device=device)
        self.everyone = torch.ones(batch, dtype=torch.bool, device=device)

    @property
    def batch(self) -> int:
        return self.history.shape[0]
