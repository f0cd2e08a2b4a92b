"""The row length a run takes from its data when its pipeline leaves ``data.seq_len`` unset.

Rows: long enough for 99% of the training samples, and about 1,024 tokens where they are shorter, so
short samples still pack several to a row. A fixed 1,024 skipped every 32x32 RGB image (3,124 tokens)
and stopped the run with "no usable sample". Under 1,024, samples of one length (images of one size) get
the row trimmed to what they fill: three 312-token letter glyphs left 88 tokens of every 1,024-token row
as padding that the model computed on (9%; a 28x28 glyph, one 840-token sample a row, left 18%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mbp.data.batches import aligned
from mbp.planning.constants import ROW_COVERAGE, SHORTEST_ROW
from mbp.planning.probe import Probe
from mbp.resolve import Resolved

LONGEST_ROW = 65536
"""A planned row holds at most this many tokens: longer samples are skipped, and the run's last line
says which ``data.seq_len`` would hold them."""
LONGEST_SPLIT_ROW = 2048
"""A head that trains on pieces of samples (``lm``) needs no sample whole in a row, so its planned rows
stop here: lm-text's row, which learned English to 0.8 x xz within minutes. A row sized to long
documents (chapters, books) made every step costlier and left minutes for a few hundred steps."""


@dataclass(frozen=True)
class RowPlan:
    seq_len: int
    covered: float
    """Share of the probed samples that fit a row."""
    probed: int
    split: bool = False
    """The head trains on pieces of samples: longer ones are cut across rows, not skipped."""
    padding: float | None = None
    """Share of the rows' tokens that packing the probed samples leaves as padding; None for split rows."""

    def describe(self) -> str:
        rest = "; longer ones are split across rows" if self.split else ""
        if self.padding is not None:
            rest += f"; {self.padding:.0%} padding"
        return f"rows of {self.seq_len} tokens ({self.covered:.0%} of {self.probed} samples probed fit{rest})"

    def summary(self) -> dict[str, float | int | None]:
        padding = None if self.padding is None else round(self.padding, 4)
        return {"seq_len": self.seq_len, "covered": round(self.covered, 4), "padding": padding}


def plan_rows(resolved: Resolved, probe: Probe) -> tuple[Resolved, RowPlan | None]:
    """``resolved`` with ``data.seq_len`` set from the training samples if the pipeline leaves it unset:
    the 99th percentile of their lengths, rounded up to the patch length, within [``SHORTEST_ROW``,
    ``LONGEST_ROW``] (``LONGEST_SPLIT_ROW`` for a head that splits samples across rows; within stage 1's
    most patches, where it names them)."""
    pipeline = resolved.pipeline
    if pipeline.data.seq_len is not None:
        return resolved, None
    patch = pipeline.model.patch_len
    split = resolved.split
    longest = LONGEST_SPLIT_ROW if split else LONGEST_ROW
    if pipeline.model.stages[0].seq_len is not None:
        longest = min(longest, pipeline.model.stages[0].seq_len * patch)
    lengths = np.asarray(probe.lengths(resolved))
    need = int(np.quantile(lengths, ROW_COVERAGE, method="inverted_cdf")) if len(lengths) else 0
    seq_len = min(max(aligned(need, patch), aligned(SHORTEST_ROW, patch)), longest - longest % patch)
    padding: float | None = None
    if not split and pipeline.data.pack and len(lengths):
        seq_len, padding = tightest_row(lengths.tolist(), seq_len, patch)
    covered = float((lengths <= seq_len).mean()) if len(lengths) else 1.0
    return with_seq_len(resolved, seq_len), RowPlan(seq_len, covered, len(lengths), split, padding)


def tightest_row(lengths: list[int], longest: int, align: int) -> tuple[int, float]:
    """The row length up to ``longest`` that packing ``lengths`` (in stream order, each sample on a
    multiple of ``align``, as ``mbp.data.batches`` packs) leaves least padding in, with that padding.

    Only samples of one length (images of one size) get a trimmed row: the shortest that still packs as
    many to a row, so a step holds the same samples (the recipe stays as it was) and what is trimmed is
    padding that every step computed on. Mixed lengths keep ``longest``: spoken words lost accuracy
    under each trim tried, at seed 0: letter names 0.921 -> 0.888 at 1,000 tokens (fewer clips a row)
    and 0.885 at 1,016 (as many rows on the probe, 0.6% of padding saved), spoken digits 0.976 -> 0.965
    at 928."""
    length = lengths[0]
    if len(set(lengths)) > 1 or length > longest:
        return longest, row_padding(lengths, longest, align)
    unit = aligned(length, align)  # each sample's room: the next one starts on a multiple of align
    seq_len = ((longest - length) // unit + 1) * unit  # as many a row as at longest, the last one whole
    return seq_len, row_padding(lengths, seq_len, align)


def row_padding(lengths: list[int], seq_len: int, align: int) -> float:
    """Share of padding in rows of ``seq_len`` packed with ``lengths`` (those longer are skipped)."""
    rows = packed_rows(lengths, seq_len, align)
    filled = sum(length for length in lengths if length <= seq_len)
    return 1.0 - filled / (rows * seq_len) if rows else 1.0


def packed_rows(lengths: list[int], seq_len: int, align: int) -> int:
    """Rows that packing ``lengths`` in order takes (samples longer than a row are skipped)."""
    rows, used = 0, 0
    for length in lengths:
        if length > seq_len:
            continue
        start = aligned(used, align) if used else 0
        if rows == 0 or start + length > seq_len:
            rows, start = rows + 1, 0
        used = start + length
    return rows


def rows_of_checkpoint(resolved: Resolved, document: dict[str, Any], shards: list[str]) -> Resolved:
    """For evaluating a checkpoint: the pipeline's ``seq_len``, else the one its run planned (in the
    checkpoint's pipeline), else one planned on ``shards``."""
    if resolved.pipeline.data.seq_len is not None:
        return resolved
    trained = ((document.get("pipeline") or {}).get("data") or {}).get("seq_len")
    if isinstance(trained, int) and trained > 0:
        return with_seq_len(resolved, trained)
    return plan_rows(resolved, Probe(shards))[0]


def with_seq_len(resolved: Resolved, seq_len: int) -> Resolved:
    return resolved.with_settings("data", seq_len=seq_len)


__all__ = [
    "LONGEST_ROW",
    "LONGEST_SPLIT_ROW",
    "RowPlan",
    "packed_rows",
    "plan_rows",
    "row_padding",
    "rows_of_checkpoint",
    "tightest_row",
    "with_seq_len",
]
