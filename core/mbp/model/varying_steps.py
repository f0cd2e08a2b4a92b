"""Generation with byte-level patches of varying length: boundaries placed online as tokens arrive.

Legend as in ``mbp.model.varying_patches``. A cache made with boundary rules keeps each row's tokens in
grid positions (each patch at the start of a slot of P), so the coarse stages embed exactly the units
the parallel forward embeds, and one ``PatchPlacer`` per row says of every token as it arrives whether it
starts a patch: then the patch before it completes early, the row's grid length jumps to the next slot,
and the coarse stages advance as they do when a fixed patch fills up, before the token is stepped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from mbp.boundaries import BoundaryRule, PatchPlacer
from mbp.model.varying_patches import patch_layout, to_grid


def placers(rules: Mapping[str, BoundaryRule] | None, batch: int, longest: int) -> list[PatchPlacer] | None:
    """One placer per row for a cache with boundary ``rules`` (None: fixed patches, no placers)."""
    return None if rules is None else [PatchPlacer(rules, longest) for _ in range(batch)]


def grid_capacity(max_len: int, rules: Mapping[str, BoundaryRule] | None, longest: int) -> int:
    """Grid positions a row of ``max_len`` tokens may need: a token a slot when every patch is one."""
    return max_len if rules is None else max_len * longest


def grid_prompts(
    ids: torch.Tensor, rows: torch.Tensor, row_placers: Sequence[PatchPlacer], longest: int, group: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's prompt ``ids: (R, L)`` in its grid, ``((1, G_r) grid ids, (1,) row)``, its placer fed
    with the prompt; the grid ends after the prompt's last token, whose patch the next token may close."""
    for prompt, row in zip(ids, rows.tolist(), strict=True):
        placer = row_placers[row]
        placer.reset()
        if len(prompt) == 0:
            yield prompt[None], rows.new_tensor([row])
            continue
        starts = [placer.push(int(t)) for t in prompt.tolist()]
        flags = torch.from_numpy(np.array(starts))[None].to(ids.device)
        layout = patch_layout(flags, None, longest, group)
        yield to_grid(prompt[None], layout)[:, : int(layout.slots[0, -1]) + 1], rows.new_tensor([row])


def start_placed_patches(
    tokens: torch.Tensor,
    counts: torch.Tensor,
    row_placers: Sequence[PatchPlacer],
    lengths: torch.Tensor,
    longest: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Before a step consumes ``tokens: (B,)``: the rows whose patch the token closes (it starts a patch
    and the current one holds tokens, ``counts: (B,)``; None where no token starts one), and their grid
    ``lengths: (B,)``, moved to the next slot there."""
    starts = [placer.push(token) for placer, token in zip(row_placers, tokens.tolist(), strict=True)]
    if not any(starts):  # most steps: no patch starts, nothing to ask of the device
        return None, lengths
    closed = torch.tensor(starts, device=counts.device) & (counts > 0)
    return closed, torch.where(closed, -(-lengths // longest) * longest, lengths)
