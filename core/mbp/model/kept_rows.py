"""Which byte-level rows of a batch carry weight in the loss, so the decoder runs only those.

A task head that trains on answers alone leaves most bytes at weight 0 (and heads that thin the context,
``HeadDefaults.thins_context``, score only a share of the context rows): their last-stage rows would be
computed and multiplied by zero.
Skipping them is exact, because those rows are independent sequences, and saves most of the
byte-level work on long contexts (a WAV clip, an image file) with a short answer.

Legend as in ``mbp.model.decoder``: B batch, L padded length, P the last stage's row length,
N = B * L / P its rows, K the rows kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mbp.protocol import PAD

KEPT_ROWS_MULTIPLE = 32
"""Kept byte-level rows are rounded up to a multiple of this (with rows of no weight, which add nothing
to the loss): their count changes every thinned batch, and each new count was a new shape for every
product of the byte-level stage. oneDNN makes a bf16 kernel per shape, so on an AMX CPU the bundled
demo's bf16 steps paid for new kernels every step and trained at 57-67 KB/s against 77-83 in fp32;
rounded, 87-92 KB/s. Only under CPU autocast: fp32 products (MKL) and GPUs have no such cost, and the
extra rows cost the demo's fp32 step 3%."""


@dataclass(frozen=True)
class KeptRows:
    """The last-stage rows to run (``keep: (N,)``) and what is needed to score their outputs."""

    keep: torch.Tensor
    lead_rows: torch.Tensor
    """(N,) bool: rows whose start position predicts a token (a row's first, or a packed sample's)."""
    lead_ids: torch.Tensor
    lead_weights: torch.Tensor
    """The tokens those start positions predict, and their weights, in row order."""
    targets: torch.Tensor
    target_weights: torch.Tensor
    """(N, P): what each row's outputs after its start position predict, and their weights."""

    def scored(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States, targets and weights of the kept rows' outputs ``out: (K, P + 1, D)``, as
        (1, lead rows kept + K * P, ...) sequences: the order does not matter to a summed loss."""
        hidden = torch.cat((out[self.lead_rows[self.keep], 0], out[:, 1:].flatten(0, 1)))[None]
        ids = torch.cat((self.lead_ids, self.targets[self.keep].flatten()))[None]
        weights = torch.cat((self.lead_weights, self.target_weights[self.keep].flatten()))[None]
        return hidden, ids, weights


def kept_rows(padded: torch.Tensor, weights: torch.Tensor, lead: torch.Tensor, size: int) -> KeptRows | None:
    """The rows of ``padded: (B, L)`` whose targets carry weight (``weights: (B, L)``), with every row
    that ``lead: (B, L)`` marks as predicting its first token from its start position; None when every
    row is kept (the full forward is then as cheap). ``size`` is the last stage's row length P."""
    # the output at (row r, position 1 + j) predicts token r * P + j + 1 unless that token is a lead
    targets = F.pad(padded[:, 1:], (0, 1), value=PAD).reshape(-1, size)
    target_weights = F.pad((weights * ~lead)[:, 1:], (0, 1)).reshape(-1, size)
    lead_rows = lead.view(-1, size)[:, 0]
    keep = (target_weights.sum(-1) > 0) | lead_rows
    if bool(keep.all()):
        return None
    if keep.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        keep = round_up_rows(keep)  # bf16 products on CPU: few shapes, kernels reused
    return KeptRows(
        keep=keep,
        lead_rows=lead_rows,
        lead_ids=padded.view(-1, size)[lead_rows, 0],
        lead_weights=weights.view(-1, size)[lead_rows, 0],
        targets=targets,
        target_weights=target_weights,
    )


def round_up_rows(keep: torch.Tensor) -> torch.Tensor:
    """``keep`` with the first rows it leaves out added until it holds a multiple of ``KEPT_ROWS_MULTIPLE``
    (or every row)."""
    missing = -int(keep.sum()) % KEPT_ROWS_MULTIPLE
    if missing == 0:
        return keep
    left_out = (~keep).nonzero().flatten()[:missing]
    return keep.index_fill(0, left_out, True)
