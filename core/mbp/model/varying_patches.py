"""Byte-level patches of varying length in the multiscale decoder.

Legend as in ``mbp.model.decoder``, and: P the last stage's longest patch (its ``seq_len``), G byte-level
patches per stage-1 unit (``U_1 / P``; 1 for two stages), K grid patches per row, M patches run.

Patch starts (``starts: (B, L)`` bool) cut each row into byte-level patches of 1 to P bytes. The coarse
stages see the row as a *grid*: every patch written at the start of a slot of P tokens and padded with
PAD, so that a coarse unit is G patches, exactly as a fixed-patch model sees P-byte patches, and the
coarse stages run the fixed path's wiring on the grid. The byte-level stage does not run on the grid's
padding: each patch is a sequence of its own (its start token and its bytes, each byte given the coarse
stage's projected output for its patch and position), patches of one length batched together, so the
byte-level stage runs bytes + patches positions, no padding.

Position t's state has seen tokens < t only when every start at position j is decided by tokens up to
j, as ``mbp.boundaries`` decides them: the state predicting token j is the output after
token j - 1 whether a patch starts at j or not, and what follows sees the start only after token j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mbp.errors import ConfigError
from mbp.model import kept_rows
from mbp.model.backbone import SegmentedBackbone
from mbp.protocol import PAD


class MultiscaleDecoder(Protocol):
    """What this module uses of ``mbp.model.decoder.MultiscaleDecoder`` (which imports this module)."""

    num_stages: int
    patch_sizes: list[int]
    units: list[int]
    dims: list[int]
    embeddings: nn.ModuleList
    backbones: nn.ModuleList

    @property
    def max_len(self) -> int | None: ...
    def hidden(self, ids: torch.Tensor, begins: torch.Tensor | None = None) -> torch.Tensor: ...
    def pad_input(self, ids: torch.Tensor) -> torch.Tensor: ...
    def first_patches(self, begins: torch.Tensor | None) -> torch.Tensor | None: ...
    def _start(self, s: int, rows: int) -> torch.Tensor: ...
    def _restart(self, x: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def _run(self, s: int, x: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor: ...
    def _to_next_stage(self, s: int, out: torch.Tensor) -> torch.Tensor: ...
    def _stage(
        self,
        s: int,
        units: torch.Tensor,
        seq: int,
        previous: torch.Tensor | None,
        first: torch.Tensor | None,
    ) -> torch.Tensor: ...


GRID_PATCHES_MULTIPLE = 16
"""Under CPU autocast a row's grid patches are rounded up to a multiple of this (see ``varying_hidden``)."""


@dataclass(frozen=True)
class PatchLayout:
    """Where each token of a (B, L) batch sits in its (B, K * P) grid."""

    slots: torch.Tensor
    """(B, L) long: each token's grid position (patch * P + its place in the patch)."""
    width: int
    """K * P: the grid's length, a multiple of the stage-1 unit."""
    sizes: torch.Tensor
    """(B * K,) long: tokens in each grid patch (0 for the padding patches that align a sample)."""
    begins: torch.Tensor | None
    """(B, K * P) bool: where packed samples begin in the grid, None when none is marked."""


def cut_long_patches(starts: torch.Tensor, longest: int) -> torch.Tensor:
    """``starts: (B, L)`` with the first token starting and a start added wherever ``longest`` tokens
    have passed since the last one (``mbp.boundaries.cut_long`` on every row)."""
    index = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    starts = starts.clone()
    starts[:, 0] = True
    last = torch.where(starts, index, 0).cummax(dim=1).values
    return starts | ((index - last) % longest == 0)


def patch_layout(
    starts: torch.Tensor, begins: torch.Tensor | None, longest: int, group: int, multiple: int | None = None
) -> PatchLayout:
    """The grid of ``starts: (B, L)`` (packed samples, ``begins: (B, L)``, start patches too), no patch
    longer than ``longest``; each packed sample begins at a multiple of ``group`` patches (a stage-1
    unit), after padding patches where its predecessor's count falls short. A row's patches are
    rounded up to a multiple of ``multiple`` (a multiple of ``group``; default ``group``)."""
    batch, length = starts.shape
    device = starts.device
    starts = cut_long_patches(starts if begins is None else starts | begins, longest)
    index = torch.arange(length, device=device).expand_as(starts)
    place = index - torch.where(starts, index, 0).cummax(dim=1).values  # place in its patch
    patch = starts.long().cumsum(1) - 1  # patch number along the row
    if begins is not None and group > 1:
        patch = patch + _alignment(starts, begins, patch, group)
    count = int(patch[:, -1].max()) + 1
    multiple = multiple or group
    per_row = -(-count // multiple) * multiple
    slots = patch * longest + place
    sizes = torch.zeros(batch * per_row, dtype=torch.long, device=device)
    flat_patch = (patch + torch.arange(batch, device=device)[:, None] * per_row).flatten()
    sizes.index_add_(0, flat_patch, torch.ones_like(flat_patch))
    grid_begins = None
    if begins is not None:
        grid_begins = torch.zeros(batch, per_row * longest, dtype=torch.bool, device=device)
        grid_begins.scatter_(1, slots, begins)
    return PatchLayout(slots, per_row * longest, sizes, grid_begins)


def _alignment(starts: torch.Tensor, begins: torch.Tensor, patch: torch.Tensor, group: int) -> torch.Tensor:
    """(B, L) long: the padding patches before each token's sample, so that every sample's first patch
    is a multiple of ``group``: each sample's patch count rounded up, summed over the samples before."""
    opens = begins.clone()
    opens[:, 0] = True
    sample = opens.long().cumsum(1) - 1  # (B, L) sample number along the row
    samples = int(sample[:, -1].max()) + 1
    counts = torch.zeros(starts.shape[0], samples, dtype=torch.long, device=starts.device)
    counts.scatter_add_(1, sample, starts.long())
    shortfall = -counts % group  # padding patches after each sample
    before = shortfall.cumsum(1) - shortfall  # before each sample
    return before.gather(1, sample)


def to_grid(ids: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
    """``ids: (B, L)`` written into the grid (B, K * P), PAD elsewhere."""
    grid = ids.new_full((ids.shape[0], layout.width), PAD)
    return grid.scatter_(1, layout.slots, ids)


def varying_hidden(
    model: MultiscaleDecoder,
    ids: torch.Tensor,
    starts: torch.Tensor,
    begins: torch.Tensor | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``MultiscaleDecoder.hidden`` with the byte-level patches ``starts: (B, L)`` places. With
    ``weights: (B, L)``, only the patches whose states predict a token of weight > 0 run (as
    ``mbp.model.kept_rows`` does for fixed patches): the other tokens' states are zeros."""
    batch, length = ids.shape
    if length == 0:
        raise ConfigError("cannot run the model on an empty input")
    if model.num_stages == 1:
        return model.hidden(ids, begins)  # no stage below the first: nothing to patch
    longest = model.patch_sizes[-1]
    group = multiple = model.units[0] // longest
    if ids.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # bf16 products on CPU make a kernel per shape, and the patch count changes every batch: a few
        # counts instead (padding patches run in the coarse stages only)
        multiple = math.lcm(group, GRID_PATCHES_MULTIPLE)
    layout = patch_layout(starts, begins, longest, group, multiple)
    if multiple != group and model.max_len is not None and layout.width > model.max_len:
        layout = patch_layout(starts, begins, longest, group)  # the stage-1 limit comes first
    grid = model.pad_input(to_grid(ids, layout))
    first = model.first_patches(layout.begins)
    previous = coarse_inputs(model, grid, first)  # (B * K, P, D_n)
    sizes = layout.sizes if weights is None else _weighted_sizes(layout, begins, weights)
    out = byte_stage(model, grid, previous, sizes)  # (B * K, P + 1, D_n)
    after = out[:, 1:].reshape(batch, -1, out.shape[-1])  # grid-aligned: the state after each byte
    index = layout.slots[:, :-1, None].expand(-1, -1, out.shape[-1])
    row_starts = out[:, 0].view(batch, -1, out.shape[-1])  # each patch's start position
    hidden = torch.cat((row_starts[:, :1], after.gather(1, index)), dim=1)  # the first predicts token 0
    if begins is None or first is None:
        return hidden
    # so does a packed sample's first patch's start position predict its first token
    lead = row_starts.gather(1, (layout.slots // longest)[..., None].expand(-1, -1, out.shape[-1]))
    return torch.where(begins[..., None], lead, hidden)


def _weighted_sizes(layout: PatchLayout, begins: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    """``layout.sizes`` with 0 for every patch no token of weight > 0 is predicted from: token t is
    predicted from the patch of token t - 1, or from its own patch's start where it begins a row or a
    packed sample."""
    batch = layout.slots.shape[0]
    per_row = layout.sizes.numel() // batch
    rows = torch.arange(batch, device=weights.device)[:, None]
    patches = layout.slots // (layout.width // per_row) + rows * per_row  # (B, L) into (B * K,)
    lead = torch.zeros_like(weights, dtype=torch.bool)
    lead[:, 0] = True
    if begins is not None:
        lead |= begins
    source = torch.where(lead, patches, F.pad(patches[:, :-1], (1, 0)))
    needed = torch.zeros_like(layout.sizes, dtype=torch.bool)
    needed[source[weights > 0]] = True
    return torch.where(needed, layout.sizes, 0)


def coarse_inputs(model: MultiscaleDecoder, grid: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """What the coarse stages add to the byte-level stage's inputs: (B * K, P, D_n) for ``grid: (B, K * P)``.
    The wiring of ``MultiscaleDecoder.stage_outputs`` for every stage but the last."""
    previous: torch.Tensor | None = None
    for s in range(model.num_stages - 1):
        units = grid.view(-1, model.units[s])
        seq = model.patch_sizes[s] if s > 0 else grid.shape[1] // model.units[0]
        previous = model._to_next_stage(s, model._stage(s, units, seq, previous, first)[:, :-1])
    assert previous is not None  # at least two stages
    return previous


def byte_stage(
    model: MultiscaleDecoder, grid: torch.Tensor, previous: torch.Tensor, sizes: torch.Tensor
) -> torch.Tensor:
    """The byte-level stage's outputs (B * K, P + 1, D_n) over the patches of ``grid``, each run only
    as long as it is (``sizes: (B * K,)``) and apart from the others; zeros where nothing ran. The
    first patch always runs: its start position predicts the first token. A backbone that keeps
    segments apart runs the patches side by side in rows of ``PACKED_ROW`` positions, one segment each,
    as packed samples are; any other runs the patches of each length as a batch of their own."""
    last = model.num_stages - 1
    longest = model.patch_sizes[last]
    tokens = model.embeddings[last](grid.view(-1, longest)) + previous  # (B * K, P, D_n)
    x = torch.cat((model._start(last, tokens.shape[0])[:, None], tokens), dim=1)
    widths = patch_widths(sizes)
    widths[0] = widths[0].clamp_min(1)
    if isinstance(model.backbones[last], SegmentedBackbone):
        out = _run_packed(model, x, widths)
    else:
        out = _run_by_width(model, x, widths)
    return out.view(x.shape[0], longest + 1, -1)


PACKED_ROW = 64
"""Positions in a row of packed byte-level patches (or the longest patch and its start, if more): one
backbone call over rows of one width instead of one per patch length, which is what a step of a few
rows spends its time on (a training step of 1 row of 2,016 text bytes at word starts: 1.35x the fixed
patch's packed, 1.57x by length; BENCHMARKS.md)."""


def _run_packed(model: MultiscaleDecoder, x: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """(M * (P + 1), D) outputs of the last stage over ``x: (M, P + 1, D)``, each patch's first
    ``widths`` positions run in packed rows, a segment each."""
    stride = x.shape[1]
    packing = pack_patches(widths, stride, max(PACKED_ROW, stride), _shape_multiple(x, PACKED_ROWS_MULTIPLE))
    flat = x.flatten(0, 1)
    rows = flat.new_zeros(packing.segments.numel(), flat.shape[-1])
    rows = rows.index_put((packing.places,), flat[packing.sources]).view(*packing.segments.shape, -1)
    ran = model._run(model.num_stages - 1, rows, packing.segments).flatten(0, 1)[packing.places]
    return ran.new_zeros(flat.shape[0], ran.shape[-1]).index_put((packing.sources,), ran)


def _run_by_width(model: MultiscaleDecoder, x: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """What ``_run_packed`` returns, from one batch of the patches of each width."""
    stride, multiple = x.shape[1], _shape_multiple(x)
    places, values = [], []
    for width in widths[widths > 0].unique().tolist():
        rows = (widths == width).nonzero().flatten()
        chosen = torch.cat((rows, rows[:1].expand(-len(rows) % multiple)))  # extra outputs dropped
        part = model._run(model.num_stages - 1, x[chosen, :width])[: len(rows)]
        places.append((rows[:, None] * stride + torch.arange(width, device=rows.device)).flatten())
        values.append(part.flatten(0, 1))
    flat = torch.cat(values)
    return flat.new_zeros(x.shape[0] * stride, flat.shape[-1]).index_put((torch.cat(places),), flat)


PACKED_ROWS_MULTIPLE = 4
"""Under CPU autocast, packed rows are rounded up to a multiple of this: 4 rows of ``PACKED_ROW``
positions are about the 288 positions that ``KEPT_ROWS_MULTIPLE`` rows of a fixed 8-byte patch's 9 round
to, so a batch's count of shapes stays as small; rounded to 32 rows, a row of 2,016 text bytes at word
starts (about 40 packed rows) ran 64."""


@dataclass(frozen=True)
class PatchPacking:
    """Where each position of the patches that run goes in the packed rows."""

    sources: torch.Tensor
    """(T,) long: the positions that run, into the flattened (M * stride,) patches."""
    places: torch.Tensor
    """(T,) long: where each goes in the flattened packed rows."""
    segments: torch.Tensor
    """(R, W) long: each packed position's patch (numbers rise along a row; padding after the last)."""


def pack_patches(widths: torch.Tensor, stride: int, row: int, multiple: int = 1) -> PatchPacking:
    """``widths: (M,)`` positions of each of M patches ``stride`` apart (0: it does not run; none over
    ``row``), in order, each patch in the row of the one before where it fits, else in a new row (next
    fit); the rows' count rounded up to a multiple of ``multiple``."""
    ran = (widths > 0).nonzero().flatten()
    counts = widths[ran]
    row_of, offset_of, used, rows = [], [], row, -1
    for width in counts.tolist():
        if used + width > row:
            rows, used = rows + 1, 0
        row_of.append(rows)
        offset_of.append(used)
        used += width
    rows = -(-(rows + 1) // multiple) * multiple
    device = widths.device
    patch_of = torch.repeat_interleave(torch.arange(len(ran), device=device), counts)
    within = torch.arange(len(patch_of), device=device) - (counts.cumsum(0) - counts)[patch_of]
    starts = torch.tensor(row_of, device=device) * row + torch.tensor(offset_of, device=device)
    places = starts[patch_of] + within
    segments = torch.full((rows * row,), len(ran), dtype=torch.long, device=device)
    segments[places] = patch_of
    return PatchPacking(ran[patch_of] * stride + within, places, segments.view(rows, row))


def _shape_multiple(like: torch.Tensor, multiple: int | None = None) -> int:
    """``multiple`` (default ``KEPT_ROWS_MULTIPLE``) under CPU autocast, else 1: bf16 products on CPU
    make a kernel per shape, and the count of rows a batch's patches take changes every step (see
    ``mbp.model.kept_rows``)."""
    if like.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return kept_rows.KEPT_ROWS_MULTIPLE if multiple is None else multiple
    return 1


def patch_widths(sizes: torch.Tensor) -> torch.Tensor:
    """(M,) positions each patch of ``sizes: (M,)`` tokens runs: its start and its bytes; 0 for empty
    patches, which do not run."""
    return torch.where(sizes > 0, sizes + 1, 0)
