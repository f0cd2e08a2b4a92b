"""A planned run keeps its budget by its own clock: once, a quarter of the way in, its steps are counted
again from what the run has measured (its steps, its first evaluation and checkpoint) instead of the few
steps timed before it started.

The plan before training times three steps of a fresh model and leaves a margin (``STEP_DRIFT``, 1.2)
for a machine that steps slower than it timed, and it estimates evaluation from the training step. On a
2-core AMD EPYC the King James run timed 0.319 s a step and 98 s of evaluation, then stepped at 0.285 s
and evaluated in 4 x 8.5 s: it ended after 5.6 of its 9 minutes, still learning. The same margin is
needed in the other direction (that machine ran 20-30% slower for an hour). A quarter in, the run knows
both, so the margin on what is left can be small (``REMAINING_DRIFT``).

Once, and before the checkpoint saved at that point, so that the checkpoint records the steps the run
will take: a run resumed from it (or any later one) takes the same steps, which keeps resume exact. A
resumed run does not count again: its clock started with the resume. The learning-rate schedule follows
the new total from that step on (its cosine stretched or shrunk: at a quarter in, 1.5x the steps moves
the factor from 0.85 to 0.93 of the peak).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mbp.train.plan import StepPlan, passes_steps

REPLAN_AT = 0.25
"""The share of the planned steps after which the run counts again (its first evaluation, by default)."""
REMAINING_DRIFT = 1.05
"""The margin on the steps left, timed on the run's own steps: the prefetching thread and the data are
in that measurement, so only the machine's own drift is left (on the EPYC, a run's last quarter stepped
up to 16% slower or 20% faster than its first)."""


@dataclass(frozen=True)
class Replan:
    """What the run counted again at ``step``."""

    step: int
    planned: int
    steps: int
    step_seconds: float
    """The run's own seconds a step so far, data included, evaluations and checkpoints not."""
    pause_seconds: float
    """The evaluation (and checkpoint) at ``step``: what each later one is expected to cost."""
    left_seconds: float
    """The run's budget left at ``step``."""

    def describe(self) -> str:
        change = "kept" if self.steps == self.planned else f"{self.planned} -> {self.steps}"
        return (
            f"steps counted again at step {self.step} from the run's own timing: {change} "
            f"({self.step_seconds:.3g} s a step and {self.pause_seconds:.1f} s an evaluation measured, "
            f"{self.left_seconds / 60:.1f} minutes of the budget left)"
        )

    def summary(self) -> dict[str, float | int]:
        return {
            "at_step": self.step,
            "steps": self.steps,
            "step_seconds": round(self.step_seconds, 4),
            "pause_seconds": round(self.pause_seconds, 2),
            "left_seconds": round(self.left_seconds, 1),
        }


@dataclass
class Deadline:
    """The budget of a run whose steps were planned: counts the seconds spent in steps and, once, the
    steps that fit what is left (``replan``)."""

    run_seconds: float
    """The run's budget, evaluation included (``train.minutes``), from ``started``."""
    started: float
    """``time.perf_counter()`` when the run began (planning included)."""
    planned: int
    eval_every: int | None
    """The pipeline's ``train.eval_every``: None evaluates four times a run, whatever its steps."""
    most: Callable[[int], int]
    """The most steps the data wants, given a candidate count (``PASSES`` over the training set,
    counted as far as the candidate needs; the plan itself where it was below the ceiling)."""
    training_seconds: float = 0.0
    steps_timed: int = 0
    replanned: Replan | None = None

    def stepped(self, seconds: float) -> None:
        self.training_seconds += seconds
        self.steps_timed += 1

    def due(self, step: int) -> bool:
        return self.replanned is None and self.steps_timed > 0 and step >= math.ceil(self.planned * REPLAN_AT)

    def replan(self, step: int, now: float, pause_seconds: float) -> Replan:
        """The steps that end the run within its budget: the steps left at the run's own step time
        (with ``REMAINING_DRIFT``) and each later evaluation at ``pause_seconds``. Never past what
        ``most`` allows, and at least one more step, so that the run ends with an evaluation."""
        per_step = self.training_seconds / self.steps_timed
        left = self.run_seconds - (now - self.started)
        steps = self.planned
        for _ in range(4):  # later evaluations depend on the total: settles in two or three rounds
            spare = left - self.pauses_after(step, steps) * pause_seconds
            steps = step + max(1, int(spare / (per_step * REMAINING_DRIFT)))
        steps = max(step + 1, min(round_down(steps), self.most(steps)))
        self.replanned = Replan(step, self.planned, steps, per_step, pause_seconds, left)
        return self.replanned

    def pauses_after(self, step: int, total: int) -> int:
        """Evaluations (each with its checkpoint) after ``step`` in a run of ``total`` steps counted again
        at ``step``: at ``every``'s multiples and the last step, less those ``skips`` leaves out."""
        every = self.every(total)
        points = [*range((step // every + 1) * every, total, every), total]
        return sum(1 for point in points if point == total or not self.skipping(step, point, every))

    def every(self, total: int) -> int:
        return self.eval_every or max(1, math.ceil(total / 4))

    def skips(self, step: int, total: int) -> bool:
        """Whether the run leaves out the evaluation (and checkpoint) at ``step``: the quarters of a
        total counted again can fall just after the evaluation the count was made at (King James: 1,000
        steps counted again at 250 became 1,400, whose first quarter is step 350)."""
        counted = self.replanned
        return counted is not None and step != total and self.skipping(counted.step, step, self.every(total))

    def skipping(self, counted_at: int, step: int, every: int) -> bool:
        return self.eval_every is None and counted_at < step < counted_at + every // 2


def round_down(steps: int) -> int:
    """To three significant digits: a few percent of timing noise changes fewer counts."""
    unit = 10 ** max(0, len(str(steps)) - 3)
    return steps // unit * unit


def deadline_of(plan: StepPlan, eval_every: int | None, shards: list[str], started: float) -> Deadline:
    """The deadline of a run planned by ``plan``: at the ceiling, the data allows up to ``PASSES``
    (counted again, as far as needed); below it, the plan already is what the data wants."""
    if plan.capped:
        per_step = plan.per_step

        def most(steps: int) -> int:
            return passes_steps(shards, per_step, steps)[0]

    else:
        planned = plan.steps

        def most(steps: int) -> int:
            return planned

    return Deadline(plan.run_seconds, started, plan.steps, eval_every, most)
