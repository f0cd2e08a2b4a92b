"""A planned run keeps its budget by its own clock: from a quarter of the way in, at each evaluation, its
steps are counted again from what the run has measured (its own steps and evaluations) instead of the
few steps timed before it started.

The plan before training times three steps of a fresh model and leaves a margin (``STEP_DRIFT``, 1.2) for
a machine that steps slower than it timed, and it estimates evaluation from the training step. On a 2-core
AMD EPYC (Zen 1, AVX2, no AVX512) a King James run planned on 0.319 s a step and 98 s of evaluation, then
stepped at 0.285 s and evaluated in 4 x 8.5 s: without a count it ends after 5.6 of its 9 minutes, still
learning. Counted once at a quarter, one run ends at 7.8 minutes (its later steps faster than its first
quarter) and another at 9.7 (its later steps 17% slower): the machine drifts within a run, so the run
counts at each evaluation until the last, each time from the steps since the count before, with a small
margin on what is left (``REMAINING_DRIFT``). After the last count a machine that slows for good would
still overrun (a capitals run stepping 0.275 s a step in its third quarter and 0.357 s in its last ends at
9.7 of its 9 minutes without a refit), and one that speeds up leaves minutes unused: at each logged step
from there the run projects its end from its pace since the count and refits its total where it would end
past its budget, or well inside it (``Deadline.refit``). Between counts it only cuts, and only where the
next count would come too late to end within the budget (a machine slowed tenfold by other work).

After its first count the run evaluates (and saves) at points the deadline spreads evenly over the
steps left, so that a new total's quarters do not bunch after an evaluation just made. Each count is
made before the checkpoint at its step, which records the total: a resumed run finishes the steps its
checkpoint recorded and does not count again (its clock started with the resume), so a run to be
repeated exactly names ``train.steps``. The learning-rate schedule follows the total from each count
on (its cosine stretched or shrunk: at a quarter in, 1.5x the steps moves the factor from 0.85 to 0.93
of the peak; later counts move less).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mbp.planning.constants import EVALUATIONS
from mbp.planning.plan import StepCount, passes_steps
from mbp.planning.probe import Probe

REPLAN_AT = 0.25
"""The share of the planned steps from which the run counts again (its first evaluation, by default)."""
REMAINING_DRIFT = 1.05
"""The margin on the steps left, timed on the run's own recent steps: the prefetching thread and the
data are in that measurement, so only the machine's drift until the next count is left."""
RECENT_STEPS = 100
"""The most steps since the last count whose mean time the run's end is projected from after it
(``Deadline.refit``, from half as many): about half a minute of steps, so that a few slow steps do not
move the total."""
REFIT_SLACK = 1.03
"""After the last count, the run takes more steps only where more than this share of its total fits: a
few percent of timing noise does not move its learning-rate schedule."""
NOTED_CHANGE = 0.02
"""The log says a refit only where it moves the total by more than this share of the last total the log
gave (a count's, or a refit's it said): near its end a run refitted at every logged step and said so
three times within 75 steps, a few steps each. The run summary's ``refitted`` keeps every refit."""


@dataclass(frozen=True)
class Replan:
    """What the run counted again at ``step``."""

    step: int
    planned: int
    """The total before this count."""
    steps: int
    step_seconds: float
    """The run's own seconds a step since the count before, data included, evaluations not."""
    pause_seconds: float
    """The evaluation at ``step``: what each later one is expected to cost."""
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


@dataclass(frozen=True)
class Refit:
    """The total set at ``step``, after the run's last count, from its pace since that count."""

    step: int
    planned: int
    steps: int
    step_seconds: float
    """The mean of the run's last steps since its last count (at most ``RECENT_STEPS``)."""
    projected_seconds: float
    """When the run would have ended at that pace with ``planned`` steps, from its start."""
    run_seconds: float

    def describe(self) -> str:
        return (
            f"steps refitted at step {self.step} to the run's pace since its last count: {self.planned} -> "
            f"{self.steps} (at {self.step_seconds:.3g} s a step it would have ended at "
            f"{self.projected_seconds / 60:.1f} of its {self.run_seconds / 60:g} minutes)"
        )

    def summary(self) -> dict[str, float | int]:
        return {
            "at_step": self.step,
            "steps": self.steps,
            "step_seconds": round(self.step_seconds, 4),
            "projected_seconds": round(self.projected_seconds, 1),
        }


@dataclass
class Deadline:
    """The budget of a run whose steps were planned: counts the seconds spent in steps and, at each
    evaluation from a quarter in until the last, the steps that fit what is left (``replan``)."""

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
    """Seconds in steps since the last count."""
    steps_timed: int = 0
    counts: list[Replan] = field(default_factory=list)
    points: list[int] | None = None
    """Where the run evaluates after its first count (``eval_every`` unset): spread over the steps left."""
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))
    refits: list[Refit] = field(default_factory=list)
    said: int = 0
    """The last total the log gave (``noted``): the plan's, a count's, or a refit's it said."""

    def __post_init__(self) -> None:
        self.said = self.said or self.planned

    def stepped(self, seconds: float) -> None:
        self.training_seconds += seconds
        self.steps_timed += 1
        self.recent.append(seconds)

    def pauses_at(self, step: int, total: int, every: int) -> bool:
        """Whether the run evaluates (and saves) at ``step``: ``every``'s multiples until the first count
        or where ``eval_every`` is given, then the points the counts spread; always at the last step."""
        if step == total:
            return True
        return step in self.points if self.points is not None else step % every == 0

    def due(self, step: int, total: int) -> bool:
        """Whether the run counts again at ``step``, one of its evaluations (``pauses_at``)."""
        return step < total and self.steps_timed > 0 and step >= math.ceil(self.planned * REPLAN_AT)

    def replan(self, step: int, total: int, now: float, pause_seconds: float) -> Replan:
        """The steps that end the run within its budget: the steps left at the run's step time since the
        last count (with ``REMAINING_DRIFT``) and each later evaluation at ``pause_seconds``. Never past
        what ``most`` allows, and at least one more step, so that the run ends with an evaluation."""
        per_step = self.training_seconds / self.steps_timed
        left = self.run_seconds - (now - self.started)
        steps = total
        for _ in range(4):  # later evaluations may depend on the total: settles in two or three rounds
            spare = left - self.pauses_after(step, steps) * pause_seconds
            steps = step + max(1, int(spare / (per_step * REMAINING_DRIFT)))
        steps = max(step + 1, min(round_down(steps), self.most(steps)))
        if self.eval_every is None:
            self.points = spread(step, steps, self.pauses_after(step, steps))
        count = Replan(step, total, steps, per_step, pause_seconds, left)
        self.counts.append(count)
        self.said = steps  # a count is always said
        self.training_seconds, self.steps_timed = 0.0, 0
        self.recent.clear()  # the pace after a count is judged on the steps since
        return count

    def refit(self, step: int, total: int, now: float) -> Refit | None:
        """After the run's last count, the steps that fit its budget at its pace since (up to
        ``RECENT_STEPS`` of it) and its evaluations left at the last one's seconds: fewer where the
        total would end past the budget, more (within ``most``) where the steps that fit exceed it by
        ``REFIT_SLACK``; None otherwise. Between counts, fewer only where the run would reach its next
        count too late to end within its budget (a machine slowed tenfold by other work): cutting on any
        projection makes the total swing (a capitals run: 1,670 -> 1,526 -> 1,302 steps on 25 steps at
        0.31-0.38 s, then 1,560 at the next count). Not before the first count: the plan's margin."""
        if not self.counts or step >= total or len(self.recent) < RECENT_STEPS // 2:
            return None
        pauses = self.evaluations_left(step, total)
        pace = sum(self.recent) / len(self.recent)
        pause = self.counts[-1].pause_seconds
        elapsed = now - self.started
        projected = elapsed + (total - step) * pace + pauses * pause
        if (
            pauses > 1
            and elapsed + (self.next_pause(step) - step) * pace + pauses * pause <= self.run_seconds
        ):
            return None  # the next count, which times the steps since the last, comes in time
        spare = self.run_seconds - elapsed - pauses * pause
        fits = step + max(1, int(spare / (pace * REMAINING_DRIFT)))
        if projected > self.run_seconds:
            steps = min(total - 1, fits)  # its next step may be its last anyway: then no change
        elif fits > total * REFIT_SLACK and pauses == 1:
            steps = max(total, min(fits, self.most(fits)))
        else:
            return None
        if steps in (step, total):
            return None
        self.follow(step, steps)  # the last evaluation moves with the total, not to a second one
        change = Refit(step, total, steps, pace, projected, self.run_seconds)
        self.refits.append(change)
        return change

    def noted(self, change: Refit) -> bool:
        """Whether the log says ``change``: where it moves the total by more than ``NOTED_CHANGE`` of the
        last total the log gave, which it then becomes."""
        if abs(change.steps - self.said) <= NOTED_CHANGE * self.said:
            return False
        self.said = change.steps
        return True

    def follow(self, step: int, steps: int) -> None:
        """The evaluations still ahead, as many as before, spread evenly from ``step`` to the total
        ``steps`` set there: in DDP every process follows rank 0's total (a count or a refit elsewhere
        than here), so that all of them evaluate and save at the same steps."""
        ahead = [point for point in self.points or [] if point > step]
        if self.points is None or not ahead:
            return
        self.points = [point for point in self.points if point <= step] + spread(step, steps, len(ahead))

    def summary(self) -> dict[str, list[dict[str, float | int]]]:
        """What changed the run's steps as it went, for the run summary's ``step_plan``."""
        changes = {
            "counted_again": [count.summary() for count in self.counts],
            "refitted": [change.summary() for change in self.refits],
        }
        return {key: made for key, made in changes.items() if made}

    def next_pause(self, step: int) -> int:
        """The run's next evaluation after ``step`` (before the last, which ``evaluations_left`` counts)."""
        if self.eval_every is not None:
            return (step // self.eval_every + 1) * self.eval_every
        return min(point for point in self.points or [step + 1] if point > step)

    def evaluations_left(self, step: int, total: int) -> int:
        """Evaluations after ``step`` in a run of ``total`` steps, its last step's included."""
        if self.eval_every is not None:
            return self.pauses_after(step, total)
        points = self.points or []
        return sum(1 for point in points if step < point < total) + 1

    def pauses_after(self, step: int, total: int) -> int:
        """Evaluations after ``step`` in a run of ``total`` steps counted again at ``step``: the quarters
        not yet reached (at least the last step's), or ``eval_every``'s multiples and the last step."""
        if self.eval_every is None:
            reached = len(self.counts) + 1 if self.points is not None else step * EVALUATIONS // self.planned
            return max(1, EVALUATIONS - reached)
        return total // self.eval_every - step // self.eval_every + (1 if total % self.eval_every else 0)


def spread(step: int, steps: int, count: int) -> list[int]:
    """``count`` evaluation points spread evenly after ``step``, the last at ``steps``."""
    return sorted({step + round((steps - step) * k / count) for k in range(1, count + 1)})


def round_down(steps: int) -> int:
    """To three significant digits: a few percent of timing noise changes fewer counts."""
    unit = 10 ** max(0, len(str(steps)) - 3)
    return steps // unit * unit


def deadline_of(plan: StepCount, eval_every: int | None, probe: Probe, started: float) -> Deadline:
    """The deadline of a run planned by ``plan``: at the ceiling, the data allows up to ``PASSES``
    (counted on by the run's ``probe``, as far as needed); below it, the plan already is what the data
    wants."""
    if plan.capped:
        per_step = plan.per_step

        def most(steps: int) -> int:
            return passes_steps(probe, per_step, steps)[0]

    else:
        planned = plan.steps

        def most(steps: int) -> int:
            return planned

    return Deadline(plan.run_seconds, started, plan.steps, eval_every, most)
