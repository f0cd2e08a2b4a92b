"""How much of a planned run's wall time goes to training: the run's minutes, less what its evaluations
will cost, at the step time measured on this machine.

The budget is the whole run, and the evaluations are counted out of it. A fixed training time with
evaluation on top fits one held-out size only: 400 s of training on a 2-core Intel Xeon with AMX took a
28x28 glyph set (1,222 held-out samples) 7.7 minutes in all (3 s planning, 8,200 steps at 0.0536 s
against 0.0486 measured before training, four evaluations of 4.4 s), two of ten minutes unused, while a
set with ten times the held-out samples would spend its margin on evaluation. The step time
is the median of a few timings (``mbp.planning.precision_plan``); planned on the fastest with a margin of
1.1, runs of that set took 8.6-9.3 minutes, on the median with 1.05 8.9-9.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mbp.planning.constants import EVAL_SHARE, EVALUATIONS, RUN_MINUTES

RUN_SECONDS = RUN_MINUTES * 60
"""A planned run's wall time where ``train.minutes`` is unset (``mbp.planning.constants.RUN_MINUTES``)."""
STEP_DRIFT = 1.2
"""The run's own steps over the step measured before it (the median of a few timings): the prefetching
thread shares the cores, and the few thinned batches timed keep more or fewer rows than the average.
On 28x28 glyphs, same machine, the timing read 0.0433-0.0518 s where every run stepped at 0.050-0.055
(1.06-1.20x: the seed picks the batches timed, and the machine's state at the start varies). At 1.2 the
worst case seen plans a 9-minute run, and a typical timing about 400 s of training."""
TRAIN_SECONDS = RUN_SECONDS / STEP_DRIFT
"""Training time, as measured steps, of a run with nothing to evaluate."""
LEAST_TRAINING = 0.5
"""The share of ``TRAIN_SECONDS`` a run trains for however long its evaluations would take: a held-out
set too big for the budget makes the run longer, and says so (``advice``)."""


FEWEST_EVAL_SAMPLES = 2000
"""A cut held-out set keeps at least this many samples: an accuracy's standard error is then at most 1.1
points. Every set of the real-data suite (at most 1,222 held out) is evaluated whole."""


@dataclass(frozen=True)
class EvalLoad:
    """What a run will evaluate: ``samples`` held-out samples, ``evaluations`` times."""

    samples: int = 0
    evaluations: int = 0
    whole: int = 0
    """The held-out samples there are, where ``samples`` is a subset spread over them; 0 where not cut."""

    def seconds(self, step_seconds: float, samples_per_step: float) -> float:
        """Evaluating costs at most what training on the same samples does: a forward pass without the
        backward, but over every row (training skips thinned ones) and with the answers of the misses
        generated. Measured on 28x28 glyphs: 4.4 s an evaluation, estimated at 7.4."""
        return self.evaluations * self.samples / max(samples_per_step, 1e-9) * step_seconds

    def fitted(self, step_seconds: float, samples_per_step: float, run_seconds: float) -> EvalLoad:
        """This load, or where its evaluations would take more than ``EVAL_SHARE`` of the run, as many of
        its samples as fit that share (at least ``FEWEST_EVAL_SAMPLES``), spread over the set."""
        seconds = self.seconds(step_seconds, samples_per_step)
        if seconds <= EVAL_SHARE * run_seconds or self.samples <= FEWEST_EVAL_SAMPLES:
            return self
        fits = max(FEWEST_EVAL_SAMPLES, int(self.samples * EVAL_SHARE * run_seconds / seconds))
        return EvalLoad(fits, self.evaluations, whole=self.samples)

    def describe(self) -> str:
        """What is evaluated, for the run's first line."""
        if not self.whole:
            return f"{self.samples:,} samples"
        return (
            f"{self.samples:,} of the {self.whole:,} held-out samples, spread over them (all of them would "
            f"take over {EVAL_SHARE:.0%} of the run; data.max_eval_samples sets how many, mbp eval scores a "
            "checkpoint on all)"
        )

    def advice(self, step_seconds: float, samples_per_step: float, run_seconds: float) -> str | None:
        """A warning where evaluating would take more than the budget leaves training (``LEAST_TRAINING``),
        with the ``data.max_eval_samples`` that keeps it to a tenth of the run."""
        seconds = self.seconds(step_seconds, samples_per_step)
        if seconds <= run_seconds * (1 - LEAST_TRAINING):
            return None
        fits = int(self.samples * run_seconds / 10 / seconds)
        return (
            f"evaluating {self.samples:,} held-out samples {self.evaluations} times would take about "
            f"{seconds / 60:.1f} minutes, more than half of a planned run's {run_seconds / 60:g}: training "
            f"keeps {LEAST_TRAINING:.0%} of its time and the run takes longer; data.max_eval_samples: "
            f"{max(fits, 1)} would keep evaluation to a tenth of the run"
        )


def evaluations(eval_every: int | None, most_steps: int) -> int:
    return EVALUATIONS if eval_every is None else math.ceil(most_steps / eval_every)


def evaluate_every(eval_every: int | None, steps: int) -> int:
    """Steps between evaluations of a run of ``steps``: ``train.eval_every``, else ``EVALUATIONS`` a run."""
    return eval_every or max(1, math.ceil(steps / EVALUATIONS))


def training_seconds(evaluation_seconds: float, run_seconds: float) -> float:
    """Seconds of measured steps a run of ``run_seconds`` trains for when its evaluations are estimated
    to take ``evaluation_seconds``."""
    return max(LEAST_TRAINING * run_seconds, run_seconds - evaluation_seconds) / STEP_DRIFT


def ceiling(seconds_per_step: float, seconds: float) -> int:
    """The most steps that fit ``seconds`` of training, rounded down to two significant digits, so that
    the few percent a timing varies by between runs changes fewer plans."""
    steps = max(1, int(seconds / max(seconds_per_step, 1e-6) * (1 + 1e-9)))  # 1e-9: a quotient's rounding
    unit = 10 ** max(0, len(str(steps)) - 2)
    return steps // unit * unit
