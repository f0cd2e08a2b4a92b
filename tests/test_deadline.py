"""A planned run counts its steps again at each evaluation from a quarter of the way in, from its own
step time and its last evaluation, and after its last count refits its steps to its recent pace, so
that it ends within its budget (``mbp.planning.deadline``)."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import pytest
from mbp.model.checkpoint_files import checkpoint_document
from mbp.planning import deadline as deadline_module
from mbp.planning import plan, precision_plan
from mbp.planning.constants import FEWEST_STEPS, PASSES
from mbp.planning.deadline import (
    NOTED_CHANGE,
    RECENT_STEPS,
    REMAINING_DRIFT,
    Deadline,
    Refit,
    deadline_of,
    round_down,
)
from mbp.planning.plan import plan_steps
from mbp.planning.probe import Probe
from mbp.train import loop

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar
from tests.test_plan import PATCH, text_set, time_steps_at


def timed(planned: int, steps: int, step_seconds: float, most: int = 10**9, run: float = 540.0) -> Deadline:
    """A deadline whose run has taken ``steps`` steps of ``step_seconds`` each."""
    deadline = Deadline(run, 0.0, planned, None, lambda _: most)
    for _ in range(steps):
        deadline.stepped(step_seconds)
    return deadline


def test_a_run_faster_than_planned_takes_the_steps_its_budget_has_left() -> None:
    # planned 1,000 steps; the first 250 took 0.2 s each, and at 60 s in its first evaluation took 5 s
    deadline = timed(1000, 250, 0.2)
    assert deadline.pauses_at(250, 1000, 250) and deadline.due(250, 1000) and not deadline.due(249, 1000)
    count = deadline.replan(250, 1000, 60.0, 5.0)
    # three evaluations left (the last at the end): 480 s less 15, at 0.2 s a step and the margin
    assert count.steps == round_down(250 + int((540 - 60 - 3 * 5) / (0.2 * REMAINING_DRIFT))) == 2460
    assert (count.step_seconds, count.left_seconds) == (pytest.approx(0.2), 480.0)
    assert "1000 -> 2460" in count.describe() and "0.2 s a step" in count.describe()
    # the evaluations left are spread over the steps left, not at the new total's quarters (615, ...)
    assert deadline.points == [987, 1723, 2460]
    assert [deadline.pauses_at(step, 2460, 615) for step in (615, 987, 1230, 1723, 2460)] == [
        False,
        True,
        False,
        True,
        True,
    ]
    # the next count times only the steps since this one: the machine slowed to 0.3 s a step
    for _ in range(737):
        deadline.stepped(0.3)
    again = deadline.replan(987, 2460, 60 + 5 + 737 * 0.3 + 5, 5.0)
    assert again.step_seconds == pytest.approx(0.3) and again.planned == 2460
    left = 540 - (60 + 5 + 737 * 0.3 + 5)
    assert again.steps == round_down(987 + int((left - 2 * 5) / (0.3 * REMAINING_DRIFT))) < 2460
    assert deadline.points is not None and len(deadline.points) == 2 and deadline.points[-1] == again.steps
    assert len(deadline.counts) == 2
    # in DDP a process whose own count differs from rank 0's follows rank 0's total
    points = deadline.points
    deadline.follow(987, again.steps + 100)
    assert deadline.points[:-2] == points[:-2] and deadline.points[-1] == again.steps + 100
    assert deadline.points[-2] == 987 + round((again.steps + 100 - 987) / 2)


def test_a_run_slower_than_planned_is_shortened_to_end_within_its_budget() -> None:
    count = timed(1000, 250, 0.5).replan(250, 1000, 140.0, 5.0)
    assert count.steps == round_down(250 + int((400 - 3 * 5) / (0.5 * REMAINING_DRIFT))) < 1000
    # a run already past its budget still takes one step more, which ends it with an evaluation
    assert timed(1000, 250, 0.5).replan(250, 1000, 600.0, 5.0).steps == 251


def counted_last(pace: float, steps: int) -> tuple[Deadline, int, float]:
    """Counted at step 1,000 of 1,000 planned (0.2 s a step, at 300 s, 5 s an evaluation), so that only
    the last evaluation is left; then ``steps`` steps of ``pace``. The deadline, its total and the time."""
    deadline = timed(1000, 1000, 0.2)
    deadline.replan(1000, 2000, 300.0, 5.0)
    assert deadline.points is not None and deadline.evaluations_left(1000, deadline.points[-1]) == 1
    for _ in range(steps):
        deadline.stepped(pace)
    return deadline, deadline.counts[-1].steps, 305.0 + steps * pace


def test_after_its_last_count_a_run_refits_its_steps_to_its_pace() -> None:
    deadline, total, now = counted_last(0.3, RECENT_STEPS // 2 - 1)
    assert deadline.refit(1000 + RECENT_STEPS // 2 - 1, total, now) is None  # too few steps to judge
    deadline, total, now = counted_last(0.3, RECENT_STEPS)  # the machine slowed to 0.3 s for good
    step = 1000 + RECENT_STEPS
    cut = deadline.refit(step, total, now)
    assert cut is not None and cut.planned == total and cut.step_seconds == pytest.approx(0.3)
    assert cut.projected_seconds == pytest.approx(now + (total - step) * 0.3 + 5.0)
    assert cut.projected_seconds > 540
    assert cut.steps == step + int((540 - now - 5.0) / (0.3 * REMAINING_DRIFT)) < total
    assert f"{total} -> {cut.steps}" in cut.describe() and "of its 9 minutes" in cut.describe()
    assert deadline.summary()["refitted"] == [cut.summary()] and len(deadline.summary()) == 2
    # at the refitted total the projection fits, inside the slack: no second change at the same pace
    assert deadline.refit(step + 25, cut.steps, now + 25 * 0.3) is None
    deadline, total, now = counted_last(0.2, RECENT_STEPS)  # the pace it counted: no change
    assert deadline.refit(1000 + RECENT_STEPS, total, now) is None
    deadline, total, now = counted_last(0.15, RECENT_STEPS)  # faster: more steps, within the data's
    more = deadline.refit(1000 + RECENT_STEPS, total, now)
    assert more is not None and more.steps == 1100 + int((540 - now - 5.0) / (0.15 * REMAINING_DRIFT))
    assert more.steps > total * 1.03 and more.projected_seconds < 540
    # the evaluation at the old total moves to the new one: no extra evaluation (nor count) there
    assert not deadline.pauses_at(total, more.steps, 500) and deadline.pauses_at(more.steps, more.steps, 500)
    for most, refitted in ((2200, 2200), (total, None)):  # never past what the data wants
        bounded = Deadline(540.0, 0.0, 1000, None, lambda _, most=most: most)
        for _ in range(1000):
            bounded.stepped(0.2)
        bounded.replan(1000, 2000, 300.0, 5.0)
        for _ in range(RECENT_STEPS):
            bounded.stepped(0.15)
        change = bounded.refit(1100, total, now)
        assert (change.steps if change else None) == refitted
    early = timed(1000, 250, 0.2)  # counted at a quarter: two more counts to come
    early.replan(250, 1000, 60.0, 5.0)
    for _ in range(RECENT_STEPS):
        early.stepped(0.5)
    assert early.refit(350, early.counts[-1].steps, 115.0) is None  # the next count comes in time
    for _ in range(RECENT_STEPS):  # ten times slower: at 987 it would be far past its budget
        early.stepped(2.0)
    cut = early.refit(450, early.counts[-1].steps, 315.0)
    assert cut is not None and cut.steps == 450 + int((540 - 315 - 3 * 5) / (2.0 * REMAINING_DRIFT))
    assert early.points == [450 + round((cut.steps - 450) * k / 3) for k in (1, 2, 3)]  # three left
    assert timed(1000, 300, 0.5).refit(300, 1000, 600.0) is None  # before its first count


def test_the_log_says_a_refit_only_where_it_moves_the_total_by_more_than_a_few_percent() -> None:
    deadline, total, now = counted_last(0.3, RECENT_STEPS)
    step = 1000 + RECENT_STEPS
    cut = deadline.refit(step, total, now)  # 0.3 s a step where 0.2 was counted: a third fewer steps
    assert cut is not None and cut.steps < total * (1 - NOTED_CHANGE) and deadline.noted(cut)

    def refit_to(steps: int, at: int) -> Refit:
        return Refit(at, deadline.refits[-1].steps, steps, 0.3, 541.0, 540.0)

    # then refits of a few steps each, 25 steps apart: said once they add up to more than 2%
    said = cut.steps
    totals = [said - said * percent // 100 for percent in (1, 2, 3, 4, 6)]
    noted = [deadline.noted(refit_to(steps, step + 25 * (i + 1))) for i, steps in enumerate(totals)]
    assert NOTED_CHANGE == 0.02 and noted == [False, False, True, False, True]
    assert not deadline.noted(refit_to(totals[-1] + 1, step + 150))
    deadline.replan(step + 200, totals[-1], now + 60, 5.0)  # a count is always said: it is the new mark
    assert deadline.said == deadline.counts[-1].steps


def test_counting_again_never_passes_what_the_data_wants_and_keeps_a_given_eval_every() -> None:
    assert timed(1000, 250, 0.2, most=1500).replan(250, 1000, 60.0, 5.0).steps == 1500
    given = Deadline(540.0, 0.0, 1000, 100, lambda _: 10**9)  # evaluations every 100 steps
    assert not given.due(250, 1000)  # no step timed yet
    assert given.pauses_after(250, 1000) == 8 and given.pauses_after(250, 1050) == 9
    for _ in range(250):
        given.stepped(0.2)
    count = given.replan(250, 1000, 60.0, 5.0)
    assert (
        given.points is None
        and given.pauses_at(300, count.steps, 100)
        and not given.pauses_at(350, 1000, 100)
    )
    assert [round_down(n) for n in (7, 999, 2447, 98765)] == [7, 999, 2440, 98700]


def test_the_data_bounds_a_capped_run_and_the_plan_bounds_one_below_its_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, shards, per_step = text_set(tmp_path, 1)
    resolved, shards, _ = text_set(tmp_path, math.ceil(1000 * per_step / PASSES))  # 30 passes: 1,000 steps
    time_steps_at(monkeypatch, 400)
    capped = plan_steps(resolved, Probe(shards), PATCH)
    assert capped.steps == 400 and capped.capped
    wanted = math.ceil(PASSES * math.ceil(1000 * per_step / PASSES) / per_step)
    assert deadline_of(capped, None, Probe(shards), 0.0).most(5000) == wanted >= 1000
    time_steps_at(monkeypatch, 4000)
    below = plan_steps(resolved, Probe(shards), PATCH)
    assert not below.capped and deadline_of(below, None, Probe(shards), 0.0).most(5000) == below.steps


LOADED_MACHINE = 5.0
"""Seconds past its budget a run's test allows: the run ends within its budget by its own clock, and a
machine busy with other work may add a few seconds around it (starting, the last checkpoint)."""


def too_busy(first: dict[str, float]) -> bool:
    """Whether the machine spent over half of a 9-second run's budget before its first count (planning
    and two steps of a tiny model take about 2 s on an idle 2-core EPYC, and 9 on one shared by eight
    test runs): then its pace swings by more than the run's margins, and little is left to refit."""
    return first["left_seconds"] < 9 / 2


def nine_second_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train: str) -> list[str]:
    """``mbp run`` arguments for a 9-second planned run (more ``train`` settings appended), planned on
    a timing of 0.5 s a step in the precision it takes and counted again from its own steps: fp32, or
    where the CPU has fast bf16, bf16, timed twice as fast as fp32."""
    registry = tmp_path / "registry.yaml"
    given = REGISTRY[REGISTRY.index("    train:") :]
    registry.write_text(REGISTRY.replace(given, f"    train: {{warmup_steps: 2, minutes: 0.15{train}}}\n"))
    write_tar(tmp_path / "train-0.tar", good_samples("a", 24))
    write_tar(tmp_path / "eval-0.tar", good_samples("e", 8))
    args = ["run", "qa", str(tmp_path / "train-0.tar"), "--eval-shards", str(tmp_path / "eval-0.tar")]
    args += ["--registry", str(registry), "--json", "--out", str(tmp_path / "out")]
    time_steps_at(monkeypatch, 1, count_again=True)
    monkeypatch.setattr(plan, "step_seconds", lambda *args: 0.5)
    seconds = {"bf16": 0.5, "fp32": 1.0}
    monkeypatch.setattr(
        precision_plan, "step_seconds", lambda resolved, *_: seconds[resolved.pipeline.train.precision]
    )
    return args


def test_a_run_planned_on_a_slow_timing_takes_the_steps_its_minutes_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool
) -> None:
    """Planned on a timing of 0.5 s a step, far slower than an idle machine steps a tiny model: a few
    steps. At the first evaluation the run counts again from its own steps and trains on to the end of
    its 9 seconds; the checkpoint written there records the new total, so a resumed run takes the
    same steps. The count is checked against the run's own timing, so a loaded machine passes too."""
    args = nine_second_run(tmp_path, monkeypatch, "")
    started = time.perf_counter()
    result = invoke_mbp(*args)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["precision"] == ("bf16" if fast_bf16 else "fp32")
    planned, counts = summary["step_plan"]["steps"], summary["step_plan"]["counted_again"]
    again = counts[0]
    # 9 s less 4 evaluations of 8 samples at 4 a step (2 steps' worth: 1 s each), over 1.2 x 0.5 s
    assert planned == 8 and again["at_step"] == math.ceil(planned / 4)
    # the steps its own timing fits in what was left, three evaluations after the count, at most what
    # the data wants (30 passes over the 24 samples, at least FEWEST_STEPS): many more than planned where
    # the machine steps the tiny model fast, one more step where a loaded machine had spent the budget
    most = max(FEWEST_STEPS, math.ceil(PASSES * 24 / summary["step_plan"]["samples_per_step"]))
    spare = again["left_seconds"] - 3 * again["pause_seconds"]
    fits = again["at_step"] + max(1, int(spare / (again["step_seconds"] * REMAINING_DRIFT)))
    expected = max(again["at_step"] + 1, min(fits, most))
    assert again["steps"] == pytest.approx(expected, rel=0.03, abs=1), result.stderr
    assert 1 <= len(counts) <= 3  # at each evaluation but the last
    # after the last count the run may refit its total to its pace: the last change holds
    changes = sorted(counts + summary["step_plan"].get("refitted", []), key=lambda change: change["at_step"])
    assert summary["steps"] == changes[-1]["steps"]
    assert too_busy(again) or seconds < 9 + LOADED_MACHINE  # within its minutes
    counted = f"steps counted again at step {again['at_step']} from the run's own timing: "
    assert f"{counted}{planned} -> {again['steps']}" in result.stderr
    recorded = checkpoint_document(Path(summary["checkpoint"]), training=True)
    assert recorded["pipeline"]["train"]["steps"] == summary["steps"]
    resumed = invoke_mbp(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == summary["steps"]
    assert "counted again" not in resumed.stderr  # a resumed run keeps its checkpoint's steps


def test_a_real_run_that_slows_after_its_last_count_refits_and_ends_within_its_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool
) -> None:
    """The run counts from fast steps, then after its last count every step takes 100 ms more: its
    projected end passes its 9 seconds, so it shortens itself at a logged step. It needs a machine
    that plans and takes the run's first quarter in a few of its 9 seconds (about 2 on an idle 2-core
    EPYC): one busy enough to spend them all there leaves no steps to refit."""
    args = nine_second_run(tmp_path, monkeypatch, ", log_every: 1")
    monkeypatch.setattr(deadline_module, "RECENT_STEPS", 4)
    step = loop.Trainer.step

    def slowing(trainer: loop.Trainer) -> tuple[float, int]:
        counts = trainer.deadline.counts if trainer.deadline is not None else []
        if (
            counts
            and trainer.deadline is not None
            and trainer.deadline.evaluations_left(trainer.state.step, trainer.settings.steps) == 1
        ):
            time.sleep(0.1)
        return step(trainer)

    monkeypatch.setattr(loop.Trainer, "step", slowing)
    started = time.perf_counter()
    result = invoke_mbp(*args)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["precision"] == ("bf16" if fast_bf16 else "fp32")
    if too_busy(summary["step_plan"]["counted_again"][0]):
        pytest.skip("the machine spent most of the run's 9 seconds before its first count")
    assert "refitted" in summary["step_plan"], result.stderr
    cuts = summary["step_plan"]["refitted"]
    # the pace the run ends on is the slowed one; a refit before the slowing took hold (a loaded machine
    # can refit up first, from its few steps since the count) measured the fast pace
    assert cuts and cuts[-1]["step_seconds"] > 0.1
    counted = summary["step_plan"]["counted_again"]
    after = [cut for cut in cuts if cut["at_step"] > counted[-1]["at_step"]]
    totals = [counted[-1]["steps"]] + [cut["steps"] for cut in after]
    assert any(new < old for old, new in itertools.pairwise(totals))  # shortened after it
    # the log says each count, and a refit where it moves the total by over 2% of the last total said
    said, lines = 0, []
    for change in sorted(counted + cuts, key=lambda change: change["at_step"]):
        if "pause_seconds" in change:  # a count
            said = change["steps"]
        elif abs(change["steps"] - said) > NOTED_CHANGE * said:
            said = change["steps"]
            lines.append(f"steps refitted at step {change['at_step']} to the run's pace since its last count")
    assert lines and all(line in result.stderr for line in lines)
    assert result.stderr.count("steps refitted") == len(lines)
    assert summary["steps"] == cuts[-1]["steps"]  # the last change of the total holds
    assert seconds < 9 + LOADED_MACHINE  # within its minutes
