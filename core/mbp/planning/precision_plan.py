"""``train.precision: auto`` settled by measurement where the hardware offers bf16.

Fast bf16 products do not make every step faster: on a 2-core Xeon with AMX the benchmark model's step
took 0.19 s in bf16 against 0.28 in fp32, but the bundled demo's small model (0.84M parameters, widths
of 64 and under) trained at 57-67 KB/s in bf16 against 77-83 in fp32: its products are too small to
pay for autocast's casts. So where the hardware would take bf16, a run times a few steps of its own
model in both precisions before training and keeps bf16 only if it is clearly faster. The choice is
written into the run's pipeline (``train.precision``), so a resumed run keeps it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mbp.data.batches import Batch
from mbp.planning.steptime import step_seconds
from mbp.resolve import Resolved
from mbp.train import distributed
from mbp.train.precision import PrecisionChoice, choose_precision

CLEARLY_FASTER = 0.95
"""bf16 is kept when its step takes at most this share of fp32's: fp32 is exact, and timings vary by a
few percent between runs."""


ROUNDS = 3
"""Timings of each precision, alternated. The choice compares the fastest of each (the first round pays
for warming the process up); the steps are planned on the median, which a run's own steps match: the
fastest of two was 0.0437-0.0487 s on 28x28 glyphs where every run stepped at 0.050-0.054."""


@dataclass(frozen=True)
class PrecisionPlan:
    choice: PrecisionChoice
    seconds: dict[str, float]
    """Typical measured seconds a step (the median of ``ROUNDS``) per precision tried; empty where nothing
    was timed."""


def plan_precision(
    resolved: Resolved, make_batches: Callable[[], list[Batch]], device: torch.device
) -> PrecisionPlan:
    """Settle ``auto``: fp32 where the hardware has no fast bf16, else the faster of the two measured on
    ``make_batches()`` (made only when there is something to measure)."""
    setting = resolved.pipeline.train.precision
    offered = choose_precision(setting, device)
    if setting != "auto" or offered.precision == "fp32":
        return PrecisionPlan(offered, {})
    batches = make_batches()
    if not batches:
        return PrecisionPlan(offered, {})
    # alternated, compared by the fastest timing of each: whichever ran first paid for warming the process
    # up (a fresh environment's first run timed bf16 at 0.091 s a step, where its runs take 0.055-0.064)
    timings: dict[str, list[float]] = {"bf16": [], "fp32": []}
    for _ in range(ROUNDS):
        for precision, times in timings.items():
            times.append(step_seconds(with_precision(resolved, precision), batches, device))
    fastest = {precision: min(times) for precision, times in timings.items()}
    seconds = {precision: statistics.median(times) for precision, times in timings.items()}
    ratio = fastest["bf16"] / fastest["fp32"]
    timing = f"{seconds['bf16']:.3g} s a step in bf16, {seconds['fp32']:.3g} in fp32"
    if ratio <= CLEARLY_FASTER:
        return PrecisionPlan(PrecisionChoice("bf16", f"{offered.reason}; measured {timing}"), seconds)
    return PrecisionPlan(
        PrecisionChoice("fp32", f"auto: bf16 measured no faster for this model ({timing})"), seconds
    )


def with_precision(resolved: Resolved, precision: str) -> Resolved:
    return resolved.with_settings("train", precision=precision)


def as_rank_zero_chose(choice: PrecisionChoice, world: distributed.World) -> PrecisionChoice:
    """Rank 0's precision on every process: ``auto`` follows timings, which differ between processes,
    and processes that multiply in different precisions would drift apart."""
    bf16 = bool(distributed.broadcast_int(int(choice.precision == "bf16"), world))
    if bf16 == (choice.precision == "bf16"):
        return choice
    return PrecisionChoice("bf16" if bf16 else "fp32", "auto: as rank 0 measured")
