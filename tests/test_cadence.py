"""The cadence of a run: which steps log, evaluate, save and count again."""

from __future__ import annotations

from dataclasses import dataclass

from mbp.config import TrainConfig
from mbp.train.cadence import Cadence, Event


def steps_with(cadence: Cadence, train: TrainConfig, event: Event) -> list[int]:
    total = train.steps or 0
    return [step for step in range(1, total + 1) if event in cadence.due(step, total, train)]


def test_fixed_steps_log_evaluate_and_save_on_their_multiples_and_at_the_last_step() -> None:
    train = TrainConfig(steps=50, eval_every=20, log_every=15)
    cadence = Cadence(evaluates=True)
    assert steps_with(cadence, train, "log") == [15, 30, 45, 50]
    assert steps_with(cadence, train, "evaluate") == [20, 40, 50]
    assert steps_with(cadence, train, "save") == [20, 40, 50]
    assert steps_with(cadence, train, "recount") == steps_with(cadence, train, "refit") == []


def test_without_eval_every_a_run_evaluates_four_times() -> None:
    train = TrainConfig(steps=100, log_every=25)
    assert steps_with(Cadence(evaluates=True), train, "evaluate") == [25, 50, 75, 100]


def test_checkpoint_every_saves_apart_from_evaluations() -> None:
    train = TrainConfig(steps=10, eval_every=4, checkpoint_every=3, log_every=100)
    cadence = Cadence(evaluates=True)
    assert steps_with(cadence, train, "save") == [3, 6, 9, 10]
    assert steps_with(cadence, train, "evaluate") == [4, 8, 10]
    assert steps_with(cadence, train, "log") == [10]


def test_a_run_without_held_out_data_saves_but_never_evaluates() -> None:
    train = TrainConfig(steps=40, eval_every=20)
    cadence = Cadence(evaluates=False)
    assert steps_with(cadence, train, "evaluate") == []
    assert steps_with(cadence, train, "save") == [20, 40]


@dataclass
class Counts:
    """A deadline that pauses at ``points`` and counts again from ``recount_from`` on."""

    points: set[int]
    recount_from: int

    def pauses_at(self, step: int, total: int, every: int) -> bool:
        return step == total or step in self.points

    def due(self, step: int, total: int) -> bool:
        return step < total and step >= self.recount_from


def test_a_planned_run_counts_again_at_a_pause_and_saves_what_it_counted() -> None:
    train = TrainConfig(steps=100, log_every=10)
    cadence = Cadence(evaluates=True, deadline=Counts({30, 60, 90}, recount_from=50))
    assert steps_with(cadence, train, "evaluate") == [30, 60, 90, 100]
    assert steps_with(cadence, train, "recount") == [60, 90]
    assert steps_with(cadence, train, "save") == [30, 60, 90, 100]
    # between pauses the run refits its total at each log line; never where it saves
    assert steps_with(cadence, train, "refit") == [10, 20, 40, 50, 70, 80]


def test_a_recount_moves_the_last_step() -> None:
    """After a recount to 70 steps, the events follow the new total: the run ends with an
    evaluation, a log line and a save at step 70, and 100 is no longer a step of it."""
    deadline = Counts({30, 60}, recount_from=50)
    cadence = Cadence(evaluates=True, deadline=deadline)
    assert cadence.due(60, 100, TrainConfig(steps=100, log_every=25)) == {"evaluate", "recount", "save"}
    counted = TrainConfig(steps=70, log_every=25)
    assert cadence.due(70, 70, counted) == {"log", "evaluate", "save"}
    assert steps_with(cadence, counted, "save") == [30, 60, 70]
    assert steps_with(cadence, counted, "log") == [25, 50, 70]
