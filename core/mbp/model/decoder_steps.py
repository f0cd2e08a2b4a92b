"""The multiscale decoder's inference: prompts prefilled and tokens stepped through a ``DecoderCache``.

Legend as in ``mbp.model.decoder``. This is the wiring of ``stage_outputs`` one position at a time; as in
state-spaces/mamba, every level owns its cache. The last stage advances on every token; a coarser stage
advances only for the rows whose unit below it just completed, and a fresh unit starts by stepping its
start token, exactly as the parallel forward wires it. Rows are independent: prompts of different
lengths sit at different phases of their patches, and masked backbone steps keep them apart.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from mbp.model.backbone import Backbone, prefill
from mbp.model.decoder_cache import DecoderCache
from mbp.model.varying_steps import start_placed_patches


class MultiscaleDecoder(Protocol):
    """What this module uses of ``mbp.model.decoder.MultiscaleDecoder`` (which imports this module)."""

    num_stages: int
    patch_sizes: list[int]
    units: list[int]
    embeddings: nn.ModuleList
    to_logits: nn.Linear

    def _backbone(self, s: int) -> Backbone: ...
    def _start(self, s: int, rows: int) -> torch.Tensor: ...
    def _to_next_stage(self, s: int, out: torch.Tensor) -> torch.Tensor: ...


def prefill_rows(
    model: MultiscaleDecoder, ids: torch.Tensor, cache: DecoderCache, rows: torch.Tensor
) -> None:
    """Make ``rows: (R,)`` of ``cache`` hold the tokens ``ids: (R, L)``, laid out as the stages see them
    (``MultiscaleDecoder.prefill`` lays a varying-patch prompt out in its grid first)."""
    count, length = ids.shape
    cache.history[rows, :length] = ids
    cache.lengths[rows] = length
    for s in range(model.num_stages):
        unit = model.units[s]
        begin = 0 if s == 0 else length - length % model.units[s - 1]
        done = (length - begin) // unit
        units = ids[:, begin : begin + done * unit]
        # the last stage embeds single bytes; earlier stages embed units of U_s bytes
        if s < model.num_stages - 1:
            units = units.reshape(count, done, unit)
        inputs = model.embeddings[s](units)
        if s > 0:
            inputs = inputs + cache.projected[s - 1][rows, :done]
        x = torch.cat((model._start(s, count)[:, None], inputs), dim=1)
        out = prefill(model._backbone(s), x, cache.caches[s], rows)
        cache.counts[s][rows] = done
        if s < model.num_stages - 1:
            projected = cache.projected[s]  # the weights' dtype; bf16 comes out under autocast
            projected[rows] = model._to_next_stage(s, out[:, -1]).to(projected.dtype)


def step(model: MultiscaleDecoder, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
    """Consume one token per row, ``tokens: (B,)``; return the next token's logits (B, V)."""
    last = model.num_stages - 1
    if cache.placers is not None and last > 0:  # varying patches: a token may close the patch before it
        closed, cache.lengths = start_placed_patches(
            tokens, cache.counts[last], cache.placers, cache.lengths, model.patch_sizes[last]
        )
        if closed is not None and bool(closed.any()):
            _advance_coarse_stages(model, closed, cache)
    cache.history[cache.rows, cache.lengths] = tokens
    cache.lengths = cache.lengths + 1
    x = model.embeddings[last](tokens)
    if last > 0:
        x = x + cache.projected[last - 1][cache.rows, cache.counts[last]]
    out = model._backbone(last).step(x, cache.caches[last], cache.everyone)
    head = model.to_logits
    logits = torch.addmm(head.bias, out, head.weight.t())  # 2-D: cheaper than a Linear call
    if last > 0:
        cache.counts[last] = cache.counts[last] + 1
        completed = cache.counts[last] == model.patch_sizes[last]
        if bool(completed.any()):  # most steps end here: no row filled a patch
            _advance_coarse_stages(model, completed, cache)
    return logits


def _advance_coarse_stages(
    model: MultiscaleDecoder, completed_last: torch.Tensor, cache: DecoderCache
) -> None:
    last = model.num_stages - 1
    completed = [torch.zeros_like(completed_last) for _ in range(model.num_stages)]
    completed[last] = completed_last
    for s in range(last, 0, -1):  # upwards: a completed unit is one more input for the stage above
        if not bool(completed[s].any()):
            break
        above = s - 1
        x = _unit_input(model, above, cache)
        cache.counts[above] = cache.counts[above] + completed[s].long()
        if above > 0:
            completed[above] = completed[s] & (cache.counts[above] == model.patch_sizes[above])
        advance = completed[s] & ~completed[above]
        if bool(advance.any()):
            out = model._backbone(above).step(x, cache.caches[above], advance)
            _project_rows(model, above, out, advance, cache)
    for s in range(1, model.num_stages):  # downwards: fresh units start with their start token
        fresh = completed[s]
        if not bool(fresh.any()):
            continue
        cache.caches[s].reset(fresh)
        cache.counts[s] = torch.where(fresh, torch.zeros_like(cache.counts[s]), cache.counts[s])
        out = model._backbone(s).step(model._start(s, len(fresh)), cache.caches[s], fresh)
        if s < last:
            _project_rows(model, s, out, fresh, cache)


def _unit_input(model: MultiscaleDecoder, s: int, cache: DecoderCache) -> torch.Tensor:
    """Stage s's input for the unit that just completed in each row (rows that completed none: junk)."""
    unit = model.units[s]
    index = (cache.lengths[:, None] - unit + torch.arange(unit, device=cache.history.device)).clamp_min(0)
    x = model.embeddings[s](cache.history.gather(1, index))
    if s > 0:
        slot = cache.counts[s].clamp(max=model.patch_sizes[s] - 1)
        x = x + cache.projected[s - 1][cache.rows, slot]
    return x


def _project_rows(
    model: MultiscaleDecoder, s: int, out: torch.Tensor, rows: torch.Tensor, cache: DecoderCache
) -> None:
    """Stage s's outputs ``out: (B, D_s)`` become stage s+1's inputs for the ``rows: (B,)`` mask only."""
    fresh = model._to_next_stage(s, out)
    cache.projected[s] = torch.where(rows[:, None, None], fresh, cache.projected[s])
