"""A planned run's steps counted again as it trains (``mbp.planning.deadline``), every process taking
rank 0's total: a new total is the one thing a recount changes (``RunSettings.with_steps``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mbp.planning.deadline import Deadline
from mbp.train import distributed


@dataclass(frozen=True)
class NewTotal:
    steps: int
    why: str
    """What the log says of it; empty where it moves the total too little to say."""


@dataclass(frozen=True)
class Recount:
    """The deadline's counts and refits, agreed across ``world``."""

    deadline: Deadline
    world: distributed.World

    def at_evaluation(self, step: int, total: int, paused: float) -> NewTotal:
        """The steps that fit what is left of the budget, from the run's own timing and the evaluation
        just made (``paused`` seconds)."""
        replan = self.deadline.replan(step, total, time.perf_counter(), paused)
        return self._agreed(step, distributed.broadcast_int(replan.steps, self.world), replan.describe())

    def at_log(self, step: int, total: int) -> NewTotal | None:
        """The steps that fit the budget at the run's pace since its last count; None: ``total`` stays."""
        change = self.deadline.refit(step, total, time.perf_counter())
        steps = distributed.broadcast_int(change.steps if change else total, self.world)
        if steps == total:
            return None
        # said only where it moves the total by a few percent
        return self._agreed(step, steps, change.describe() if change and self.deadline.noted(change) else "")

    def _agreed(self, step: int, steps: int, why: str) -> NewTotal:
        self.deadline.follow(step, steps)  # where this process counted differently from rank 0
        return NewTotal(steps, why)
