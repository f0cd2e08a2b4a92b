"""What a run does after a step besides training: log, evaluate, count its steps again, save."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from mbp.config import TrainConfig
from mbp.planning.budget import evaluate_every

Event = Literal["log", "evaluate", "recount", "save", "refit"]
"""In the order the run does them: a recount comes before the save, so that its checkpoint records the
steps counted; a refit only where nothing is saved (a save is a pause, a refit times the steps between)."""


class Counts(Protocol):
    """Where a run with a time budget pauses and counts again (``mbp.planning.deadline.Deadline``)."""

    def pauses_at(self, step: int, total: int, every: int) -> bool: ...

    def due(self, step: int, total: int) -> bool: ...


@dataclass(frozen=True)
class Cadence:
    """The events due after each step of a run with ``train``'s settings. ``evaluates``: the run has
    held-out data. ``deadline``: a planned run's counts, which place its evaluations and recounts."""

    evaluates: bool
    deadline: Counts | None = None

    def due(self, step: int, total: int, train: TrainConfig) -> frozenset[Event]:
        """The events after ``step`` of ``total``: a log line every ``log_every`` steps, an evaluation at
        each pause (every ``evaluate_every`` steps, or where the deadline places them), a save at each
        pause or every ``checkpoint_every`` steps; all three at the last step."""
        deadline, every, last = self.deadline, evaluate_every(train.eval_every, total), step == total
        pausing = deadline.pauses_at(step, total, every) if deadline is not None else step % every == 0
        logging = step % train.log_every == 0
        events: set[Event] = set()
        if logging or last:
            events.add("log")
        if self.evaluates and (pausing or last):
            events.add("evaluate")
        if pausing and deadline is not None and deadline.due(step, total):
            events.add("recount")
        saving = step % train.checkpoint_every == 0 if train.checkpoint_every else pausing
        if saving or last or "recount" in events:
            events.add("save")
        elif deadline is not None and logging:
            events.add("refit")
        return frozenset(events)
