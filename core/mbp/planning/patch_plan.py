"""Rows, and the patch of one row: what ``mbp.planning.boundary_plan`` gives a field laid out in rows
where the pipeline leaves the byte-level patch unset.

A patch is what the global stage sees as one position, and the byte-level stage reads one patch at a
time. Images and spectrograms come in rows (``CodecTraits.rows``: an image's pixels, a spectrogram's
frames).
With a patch of one row the global stage sees an image as its column of rows and every patch covers
the same pixels of its row; with 8-byte patches a 28-pixel row straddles patches differently from row
to row, and the global stage has four times the positions to relate. Measured on 28x28 lowercase
glyphs from held-out fonts (9-minute runs on a 2-core EPYC, BENCHMARKS.md): patch 8 0.887 and 0.899
(seeds 0, 1), 16 0.924, 28 (a row) 0.971, 32 on rows padded to 32 pixels 0.973; rows padded to 32 at
patch 8 (aligned, four patches a row) 0.871: the row per position is what pays, not the alignment.
"""

from __future__ import annotations

from collections.abc import Iterable

from mbp.config import ModelConfig
from mbp.planning.constants import DEFAULT_PATCH
from mbp.protocol import decode_stream
from mbp.resolve import Resolved
from mbp.sample import EncodedSample

PROBE_SAMPLES = 64
"""Training samples read for their rows and patches, in the training stream's shuffled order (a set
written one kind of sample at a time would otherwise show one modality only)."""
LARGEST = 128
"""The longest row taken whole: the global stage maps each position to patch x byte-stage width."""


def patch_for_row(row: int) -> int | None:
    """The patch for rows of ``row`` bytes: the row itself from 8 to ``LARGEST`` bytes, whole rows where
    they are shorter, else the largest part of a row in that range (None: a row with no such part)."""
    if row < DEFAULT_PATCH:
        return -(-DEFAULT_PATCH // row) * row
    if row <= LARGEST:
        return row
    parts = [size for size in range(LARGEST, DEFAULT_PATCH - 1, -1) if row % size == 0]
    return parts[0] if parts else None


def field_rows(resolved: Resolved, samples: Iterable[EncodedSample]) -> dict[int, list[str]]:
    """Each row length of ``samples``' fields whose codec lays them out in rows, with its fields."""
    fields = resolved.encoder.fields
    seen: dict[int, list[str]] = {}
    for sample in samples:
        for span in sample.spans:
            field = fields.get(span.field)
            if field is None or not field.traits.rows or sample.first != 0:
                continue
            segments = decode_stream(sample.tokens[span.start : span.end]).segments
            row = field.row_bytes(segments[0]) if segments else None
            if row is not None and span.field not in seen.setdefault(row, []):
                seen[row].append(span.field)
    return seen


def with_byte_patch(resolved: Resolved, patch: int) -> Resolved:
    """``resolved`` with the byte-level stage's patch set, and an encoder that packs for it."""
    model = resolved.pipeline.model.with_byte_patch(patch)
    return resolved.with_encoding(resolved.pipeline.model_copy(update={"model": model}))


def with_trained_patch(resolved: Resolved, trained: ModelConfig) -> Resolved:
    """For evaluating a checkpoint: a byte-level patch the pipeline leaves unset, as its run planned it."""
    if not resolved.pipeline.model.leaves_byte_patch or not trained.patches:
        return resolved
    return with_byte_patch(resolved, trained.patches[-1])
