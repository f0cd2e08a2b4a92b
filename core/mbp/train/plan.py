"""What a run takes from its data when its pipeline leaves it unset: the row length and the steps.

Rows (``data.seq_len``): long enough for 99% of the training samples, and about 1,024 tokens where they
are shorter, so short samples still pack several to a row. A fixed 1,024 skipped every 32x32 RGB image
(3,124 tokens) and stopped the run with "no usable sample". Under 1,024, samples of one length (images of one
size) get the row trimmed to what they fill: three 312-token letter glyphs left 88 tokens of every
1,024-token row as padding that the model computed on (9%; a 28x28 glyph, one 840-token sample a row,
left 18%).

Steps (``train.steps``): a fixed step count suits one data-set size: 600 steps were 26 passes over
1,500 8x8 digits (held-out loss rising after 13) but 3 over 4,316 letter glyphs (still learning at the
end: 0.948, where 1,200 steps gave 0.98). So the default is counted in passes over the training set,
with a floor for small sets (the best checkpoint by held-out metric is kept, so extra passes cost time,
not quality) and a ceiling in time: the steps that fit ``TRAIN_SECONDS`` at the step time measured on
this machine, at the run's precision (:mod:`mbp.train.steptime`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mbp.data.batches import Batch, Position, aligned, batches, encoded_stream
from mbp.data.encode import EncodedSample
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog
from mbp.heads import splits_samples
from mbp.model.build import build_model
from mbp.resolve import Resolved
from mbp.train.precision_plan import PrecisionPlan, plan_precision, with_precision
from mbp.train.steptime import step_seconds

PASSES = 15
"""Passes over the training set. Letter glyphs went 0.910 / 0.948 / 0.981 at 2.5 / 3.3 / 5 passes and
no further at 6.7, but spoken letter names (26 classes) were 0.811 / 0.876 / 0.895 at 6 / 9 / 12
passes: 6 was too few for the harder set, and the best checkpoint is kept, so extra passes on an easy
set cost minutes, not accuracy. 15 since answer heads score a quarter of the context rows a step
(``ThinningHead``): a pass costs about half what it did, and at 10 the thinned context had cost spoken
words 1-2.5 points (0.946 against 0.972 on digits)."""
FEWEST_STEPS = 600
TRAIN_SECONDS = 400.0
"""The ceiling: a planned run trains for about this long, its steps counted from a step timed on its own
model, batches and precision before training. Evaluation and checkpoints come on top: 6.5 minutes of
training made 8-9 minute runs on the real-data suite on the AMD machine, where evaluation was slowest,
and a machine's speed can drift by a fifth within a run: 400 s keeps such a run under 10 minutes. Timing
what the step costs makes the ceiling follow the model and the machine: a wider or deeper model takes
fewer steps, byte-level rows the model skips (no weighted target: ``ThinningHead``, ``context_weight:
0``) cost nothing, and a machine that multiplies in bf16 (AMX, a GPU) trains more steps in the same
minutes. The ceiling used to count arithmetic (14 TFLOP, 6.5 minutes on the 2-core AMD EPYC it was
measured on); on a 2-core Xeon with AMX the same plans took under 3 minutes. More is a choice to write
down (``train.steps``): a measured ceiling can differ by a step or two between runs, so a run to be
repeated exactly names its steps."""
PROBE_ROWS = 64
"""Rows packed from the stream's first samples to measure how many samples a step holds."""
SHORTEST_ROW = 1024
LONGEST_ROW = 65536
"""A planned row holds at most this many tokens: longer samples are skipped, and the run's last line
says which ``data.seq_len`` would hold them."""
LONGEST_SPLIT_ROW = 2048
"""A head that trains on pieces of samples (``lm``) needs no sample whole in a row, so its planned rows
stop here: lm-text's row, which learned English to 0.8 x xz within minutes. A row sized to long
documents (chapters, books) made every step costlier and left minutes for a few hundred steps."""
PROBE_SAMPLES = 512
"""Samples encoded from the start of the (shuffled) training stream to measure their lengths."""


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


def plan_rows(resolved: Resolved, shards: list[str]) -> tuple[Resolved, RowPlan | None]:
    """``resolved`` with ``data.seq_len`` set from the training samples if the pipeline leaves it unset:
    the 99th percentile of their lengths, rounded up to the patch length, within [``SHORTEST_ROW``,
    ``LONGEST_ROW``] (``LONGEST_SPLIT_ROW`` for a head that splits samples across rows; within stage 1's
    most patches, where it names them)."""
    pipeline = resolved.pipeline
    if pipeline.data.seq_len is not None:
        return resolved, None
    patch = pipeline.model.patch_len
    split = splits_samples(resolved.head)
    longest = LONGEST_SPLIT_ROW if split else LONGEST_ROW
    if pipeline.model.stages[0].seq_len is not None:
        longest = min(longest, pipeline.model.stages[0].seq_len * patch)
    lengths = np.asarray(sample_lengths(resolved, shards))
    need = int(np.quantile(lengths, 0.99, method="inverted_cdf")) if len(lengths) else 0
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
    return plan_rows(resolved, shards)[0]


def with_steps(resolved: Resolved, steps: int) -> Resolved:
    pipeline = resolved.pipeline
    train = pipeline.train.model_copy(update={"steps": steps})
    return dataclasses.replace(resolved, pipeline=pipeline.model_copy(update={"train": train}))


def with_seq_len(resolved: Resolved, seq_len: int) -> Resolved:
    pipeline = resolved.pipeline
    data = pipeline.data.model_copy(update={"seq_len": seq_len})
    return dataclasses.replace(resolved, pipeline=pipeline.model_copy(update={"data": data}))


def sample_lengths(resolved: Resolved, shards: list[str]) -> list[int]:
    """Encoded lengths of the training stream's first ``PROBE_SAMPLES`` samples."""
    stream = training_order(resolved, shards, sys.maxsize)  # nothing is too long to be measured
    return [len(sample.tokens) for sample, _ in itertools.islice(stream, PROBE_SAMPLES)]


def training_order(
    resolved: Resolved, shards: list[str], seq_len: int, augment: bool = False
) -> Iterator[tuple[EncodedSample, Position]]:
    """One pass of the training stream's first epoch, shuffled as training shuffles it: shards written
    one kind of sample at a time would otherwise start unrepresentative. ``augment``: samples varied and
    weighted as training's are."""
    data, train = resolved.pipeline.data, resolved.pipeline.train
    return encoded_stream(
        shards,
        resolved.encoder,
        seq_len,
        SkipLog(quiet=True),
        seed=train.seed,
        shuffle_buffer=data.shuffle_buffer,
        repeat=False,
        augment=augment,
        split=splits_samples(resolved.head),
    )


@dataclass(frozen=True)
class StepProbe:
    per_step: float
    """Samples in one step's rows (all processes and accumulated batches together)."""
    flops: float
    """Floating-point operations of one training step, forward and backward."""
    seconds: float
    """One training step's time on this machine, measured (``mbp.train.steptime``)."""


@dataclass(frozen=True)
class StepPlan:
    steps: int
    samples: int
    """Training samples counted; at the ceiling, counting stops once it is reached."""
    per_step: float
    """Samples in one step's rows (all processes and accumulated batches together)."""
    capped: bool
    """``PASSES`` would take more than the ceiling; ``samples`` is then where counting stopped."""
    seconds: float = 0.0
    """The measured step time the ceiling was counted from."""

    def describe(self) -> str:
        passes = self.steps * self.per_step / max(1, self.samples)
        timed = f"{self.seconds:.3g} s a step measured"
        if self.capped:
            return (
                f"{self.steps} steps (the default ceiling, about {TRAIN_SECONDS / 60:.0f} minutes at "
                f"{timed}: {PASSES} passes over {self.samples:,}+ samples at about {self.per_step:.0f} "
                "a step would take more; set train.steps)"
            )
        return (
            f"{self.steps} steps ({passes:.1f} passes over {self.samples:,} samples, "
            f"about {self.per_step:.0f} a step; {timed})"
        )


def plan_steps(
    resolved: Resolved,
    shards: list[str],
    align: int,
    device: torch.device | None = None,
    seconds: float | None = None,
) -> StepPlan:
    """``PASSES`` over ``shards``, at least ``FEWEST_STEPS`` and at most ``ceiling`` (which wins: steps
    long enough that the floor would outlast the minutes are held to them). Reads at most the samples
    the ceiling needs, and encodes only the first ``PROBE_ROWS`` rows' worth."""
    probe = probe_steps(resolved, shards, align, device, seconds)
    per_step = probe.per_step
    most = ceiling(probe.seconds)
    enough = math.ceil(most * per_step / PASSES) + 1
    samples = sum(1 for _ in itertools.islice(read_samples(shards, SkipLog(quiet=True)), enough))
    wanted = max(FEWEST_STEPS, math.ceil(PASSES * samples / per_step))
    return StepPlan(min(most, wanted), samples, per_step, wanted > most, probe.seconds)


def ceiling(seconds_per_step: float) -> int:
    """The most steps a planned run takes: ``TRAIN_SECONDS`` worth, rounded down to two significant
    digits, so that the few percent a timing varies by between runs changes fewer plans."""
    steps = max(1, int(TRAIN_SECONDS / max(seconds_per_step, 1e-6)))
    unit = 10 ** max(0, len(str(steps)) - 2)
    return steps // unit * unit


def probe_steps(
    resolved: Resolved,
    shards: list[str],
    align: int,
    device: torch.device | None = None,
    seconds: float | None = None,
) -> StepProbe:
    """Samples in one step, from the training stream's own packing of its first samples, what a step
    computes and how long it takes on ``device`` (default CPU). A head that thins training weights
    (``ThinningHead``) is probed again on the rows weighted (and varied) as training weights them;
    other heads' weights do not vary."""
    data, train = resolved.pipeline.data, resolved.pipeline.train
    rows = samples = 0
    probed: list[Batch] = []  # the batches whose arithmetic is counted and whose steps are timed
    for batch in _probe_batches(resolved, shards, align, augment=False):
        rows += len(batch.rows)
        samples += batch.samples_started
        probed.append(batch)
    if resolved.encoder.thinning is not None:
        probed = list(_probe_batches(resolved, shards, align, augment=True)) or probed
    per_row = samples / rows if rows else 1.0
    if not probed:
        return StepProbe(per_row * data.batch_rows * train.grad_accum, 0.0, 0.0)
    flops = step_flops(resolved, probed[0]) * train.grad_accum
    if seconds is None:
        seconds = step_seconds(resolved, probed, device or torch.device("cpu"))
    return StepProbe(per_row * data.batch_rows * train.grad_accum, flops, seconds)


def timing_batches(resolved: Resolved, shards: list[str], align: int) -> list[Batch]:
    """The probe's batches as training weights them (thinned where the head thins)."""
    return list(_probe_batches(resolved, shards, align, augment=resolved.encoder.thinning is not None))


def step_flops(resolved: Resolved, batch: Batch) -> float:
    """Floating-point operations of a training step on ``batch``: the loss's forward counted by torch's
    FlopCounterMode on a model of the pipeline's shapes (fresh weights; torch's random state is left as
    it was), x3 for the backward, which costs about twice the forward in matrix products. The counter
    sees matrix products and attention (the Mamba path's chunked scan is einsums, so it is seen too),
    not elementwise work, which the measured GFLOP/s already pays for."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(resolved.pipeline.model, resolved.components).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.loss(batch.tokens, batch.weights, batch.begins)
    return 3.0 * counter.get_total_flops()


def _probe_batches(resolved: Resolved, shards: list[str], align: int, augment: bool) -> Iterator[Batch]:
    """The training stream's first ``PROBE_ROWS`` rows, in batches as training packs them."""
    data = resolved.pipeline.data
    stream = training_order(resolved, shards, data.row_len, augment=augment)
    split = splits_samples(resolved.head)
    packed = batches(stream, data.batch_rows, data.row_len, pack=data.pack, align=align, split=split)
    for batch, _ in itertools.islice(packed, math.ceil(PROBE_ROWS / data.batch_rows)):
        yield batch


@dataclass(frozen=True)
class RunPlan:
    resolved: Resolved
    """The pipeline with ``data.seq_len`` and ``train.steps`` given or planned: checkpoints keep both."""
    rows: RowPlan | None
    steps: StepPlan | None
    """None where the pipeline gives the value."""
    precision: PrecisionPlan


def plan_run(resolved: Resolved, shards: list[str], device: torch.device | None = None) -> RunPlan:
    """Rows, then the precision (``auto`` settled by timing both where the hardware offers bf16), then
    steps (which count samples in those rows), for what the pipeline leaves unset. Rows are
    deterministic; precision and steps at the ceiling follow measured step times, so a resumed run takes
    both from its checkpoint (``Trainer``), not from planning again."""
    device = device or torch.device("cpu")
    planned, rows = plan_rows(resolved, shards)
    align = planned.pipeline.model.patch_len
    precision = plan_precision(planned, lambda: timing_batches(planned, shards, align), device)
    planned = with_precision(planned, precision.choice.precision)
    if planned.pipeline.train.steps is not None:
        return RunPlan(planned, rows, None, precision)
    seconds = precision.seconds.get(precision.choice.precision)
    steps = plan_steps(planned, shards, align, device, seconds)
    return RunPlan(with_steps(planned, steps.steps), rows, steps, precision)


def preview(resolved: Resolved, shards: list[str]) -> dict[str, Any]:
    """What ``mbp run`` would train on ``shards``: its rows and steps, given by the pipeline or planned."""
    plan = plan_run(resolved, shards)
    pipeline = plan.resolved.pipeline
    rows, steps = pipeline.data.row_len, pipeline.train.total_steps
    return {
        "seq_len": rows,
        "steps": steps,
        "planned": [
            name for name, part in (("seq_len", plan.rows), ("steps", plan.steps)) if part is not None
        ],
        "describe": ", ".join(
            [
                plan.rows.describe() if plan.rows else f"rows of {rows} tokens (given)",
                plan.steps.describe() if plan.steps else f"{steps} steps (given)",
            ]
        ),
    }


__all__ = [
    "FEWEST_STEPS",
    "LONGEST_ROW",
    "LONGEST_SPLIT_ROW",
    "PASSES",
    "SHORTEST_ROW",
    "TRAIN_SECONDS",
    "RowPlan",
    "RunPlan",
    "StepPlan",
    "StepProbe",
    "ceiling",
    "packed_rows",
    "plan_rows",
    "plan_run",
    "plan_steps",
    "preview",
    "probe_steps",
    "row_padding",
    "rows_of_checkpoint",
    "sample_lengths",
    "step_flops",
    "tightest_row",
    "training_order",
    "with_seq_len",
    "with_steps",
]
