"""How long a run trains when its pipeline names no ``train.steps``: a number of passes over its data.

A fixed step count suits one data-set size: 600 steps were 26 passes over 1,500 8x8 digits (held-out
loss rising after 13) but 3 over 4,316 letter glyphs (still learning at the end: 0.948, where 1,200
steps gave 0.98). So the default is counted in passes over the training set, with a floor for small
sets (the best checkpoint by held-out metric is kept, so extra passes cost time, not quality) and a
ceiling that keeps a default run to minutes on 2 CPU cores.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from mbp.data.batches import batches, encoded_stream
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog
from mbp.resolve import Resolved

PASSES = 6
"""Passes over the training set: letter glyphs went 0.910 / 0.948 / 0.981 at 2.5 / 3.3 / 5 passes and
no further at 6.7; 1,660 digit glyphs were still rising slightly at 9 passes."""
FEWEST_STEPS = 600
MOST_STEPS = 1500
MOST_TOKENS = 10_000_000
"""The ceiling: at most this many steps and row tokens (rows x seq_len), about 9 minutes of the
registry's classifier sizes on 2 CPU cores (19 K tokens/s). More is a choice to write down."""
PROBE_ROWS = 64
"""Rows packed from the stream's first samples to measure how many samples a step holds."""


@dataclass(frozen=True)
class StepPlan:
    steps: int
    samples: int
    """Training samples counted; at the ceiling, counting stops once it is reached."""
    per_step: float
    """Samples in one step's rows (all processes and accumulated batches together)."""
    capped: bool
    """``PASSES`` would take more than the ceiling; ``samples`` is then where counting stopped."""

    def describe(self) -> str:
        passes = self.steps * self.per_step / max(1, self.samples)
        if self.capped:
            return (
                f"{self.steps} steps (the default ceiling: {PASSES} passes over {self.samples:,}+ "
                f"samples at about {self.per_step:.0f} a step would take more; set train.steps)"
            )
        return (
            f"{self.steps} steps ({passes:.1f} passes over {self.samples:,} samples, "
            f"about {self.per_step:.0f} a step)"
        )


def plan_steps(resolved: Resolved, shards: list[str], align: int) -> StepPlan:
    """``PASSES`` over ``shards``, at least ``FEWEST_STEPS`` and at most ``ceiling``. Reads at most the
    samples the ceiling needs, and encodes only the first ``PROBE_ROWS`` rows' worth."""
    per_step = samples_per_step(resolved, shards, align)
    most = ceiling(resolved)
    enough = math.ceil(most * per_step / PASSES) + 1
    samples = sum(1 for _ in itertools.islice(read_samples(shards, SkipLog(quiet=True)), enough))
    wanted = math.ceil(PASSES * samples / per_step)
    return StepPlan(min(most, max(FEWEST_STEPS, wanted)), samples, per_step, wanted > most)


def ceiling(resolved: Resolved) -> int:
    """The most steps a planned run takes: ``MOST_STEPS``, fewer for long rows, never under the floor."""
    data, train = resolved.pipeline.data, resolved.pipeline.train
    tokens_per_step = data.batch_size * train.grad_accum * data.seq_len
    return max(FEWEST_STEPS, min(MOST_STEPS, MOST_TOKENS // tokens_per_step))


def samples_per_step(resolved: Resolved, shards: list[str], align: int) -> float:
    """Samples in one step, from the training stream's own packing of its first samples."""
    data, train = resolved.pipeline.data, resolved.pipeline.train
    # shuffled as training shuffles: shards written one kind of sample at a time start unrepresentative
    stream = encoded_stream(
        shards,
        resolved.encoder,
        data.seq_len,
        SkipLog(quiet=True),
        seed=train.seed,
        shuffle_buffer=data.shuffle_buffer,
        repeat=False,
    )
    rows = samples = 0
    packed = batches(stream, data.batch_size, data.seq_len, pack=data.pack, align=align)
    for batch, _ in itertools.islice(packed, math.ceil(PROBE_ROWS / data.batch_size)):
        rows += len(batch.rows)
        samples += sum(len(row) for row in batch.rows)
    per_row = samples / rows if rows else 1.0
    return per_row * data.batch_size * train.grad_accum


__all__ = [
    "FEWEST_STEPS",
    "MOST_STEPS",
    "MOST_TOKENS",
    "PASSES",
    "StepPlan",
    "ceiling",
    "plan_steps",
    "samples_per_step",
]
