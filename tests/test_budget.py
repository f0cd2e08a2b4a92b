"""A planned run's minutes include its evaluations: the training ceiling is the run's budget less what
evaluating its held-out set will cost, at the measured step time (``mbp.planning.budget``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mbp.config import TrainConfig
from mbp.data.batches import spread
from mbp.data.skips import SkipLog
from mbp.planning import budget
from mbp.planning.budget import (
    LEAST_TRAINING,
    RUN_SECONDS,
    STEP_DRIFT,
    TRAIN_SECONDS,
    EvalLoad,
    ceiling,
    evaluations,
    training_seconds,
)
from mbp.planning.constants import EVAL_SHARE, EVALUATIONS, PASSES
from mbp.planning.plan import plan_run, plan_steps
from mbp.planning.probe import Probe
from mbp.planning.recorded import recorded_eval_samples
from mbp.resolve import Resolved
from mbp.train.evaluate import eval_batches

from tests.shardkit import write_tar
from tests.test_plan import MOST_STEPS, PATCH, text_set, time_steps_at


def test_the_budget_is_the_run_less_its_evaluations() -> None:
    assert pytest.approx(RUN_SECONDS) == TRAIN_SECONDS * STEP_DRIFT and RUN_SECONDS < 600
    assert training_seconds(0.0, RUN_SECONDS) == pytest.approx(TRAIN_SECONDS)
    assert training_seconds(54.0, RUN_SECONDS) == pytest.approx((RUN_SECONDS - 54.0) / STEP_DRIFT)
    # however long evaluation would take, a run still trains for half its time
    assert training_seconds(10 * RUN_SECONDS, RUN_SECONDS) == pytest.approx(LEAST_TRAINING * TRAIN_SECONDS)
    # 4 evaluations of 1,200 samples at 8 a step and 0.05 s a step: 600 steps' worth, 30 s
    assert EvalLoad(1200, 4).seconds(0.05, 8.0) == pytest.approx(30.0)
    assert EvalLoad().seconds(0.05, 8.0) == 0.0
    assert evaluations(None, 9000) == 4 and evaluations(1000, 9500) == 10


def eval_shard(tmp_path: Path, count: int) -> list[str]:
    samples = [{"__key__": f"e{i:05d}".encode(), "txt": b"a line of text, %05d." % i} for i in range(count)]
    write_tar(tmp_path / "eval.tar", samples)
    return [str(tmp_path / "eval.tar")]


def capped_text_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, times: int = 1
) -> tuple[Resolved, list[str], int]:
    """A training set whose passes take ``3 * times`` the ceiling (``MOST_STEPS``, steps timed to it),
    its shards, and the samples a step holds."""
    time_steps_at(monkeypatch, MOST_STEPS)
    _, _, per_step = text_set(tmp_path, 1)
    resolved, shards, _ = text_set(tmp_path, 3 * math.ceil(times * MOST_STEPS * per_step / PASSES))
    return resolved, shards, per_step


def test_evaluations_are_taken_out_of_the_training_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, shards, per_step = capped_text_set(tmp_path, monkeypatch)
    step = TRAIN_SECONDS / MOST_STEPS
    assert plan_steps(resolved, Probe(shards), PATCH).steps == MOST_STEPS
    # held-out samples whose four evaluations cost 250 steps' worth of time
    held_out = 250 * per_step // 4
    planned = plan_steps(resolved, Probe(shards, eval_shard(tmp_path, held_out)), PATCH)
    costs = 4 * held_out / per_step * step
    assert planned.eval_seconds == pytest.approx(costs)
    assert planned.train_seconds == pytest.approx((RUN_SECONDS - costs) / STEP_DRIFT)
    assert planned.steps == ceiling(step, planned.train_seconds) < MOST_STEPS
    assert f"4 evaluations of {held_out:,} samples at most {costs:.0f} s" in planned.describe()
    assert planned.advice() is None  # under half the run: nothing to say
    # a pipeline that evaluates more often pays for each evaluation
    often = resolved.with_settings("train", eval_every=100)
    assert plan_steps(often, Probe(shards, eval_shard(tmp_path, held_out)), PATCH).steps < planned.steps


def test_a_held_out_set_too_big_for_its_share_is_evaluated_on_a_spread_subset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where evaluating every held-out sample would take over ``EVAL_SHARE`` of the run, a planned run
    evaluates as many as fit that share (at least ``FEWEST_EVAL_SAMPLES``), spread over the set, and
    trains for the rest; the pipeline then says how many (``data.max_eval_samples``)."""
    resolved, shards, per_step = capped_text_set(tmp_path, monkeypatch)
    step = TRAIN_SECONDS / MOST_STEPS
    monkeypatch.setattr(budget, "FEWEST_EVAL_SAMPLES", per_step)  # the test's sets are small
    held_out = MOST_STEPS * per_step // 2  # four evaluations: twice the training's time
    planned = plan_steps(resolved, Probe(shards, eval_shard(tmp_path, held_out)), PATCH)
    load = planned.evaluation
    every = 4 * held_out / per_step * step
    assert load.whole == held_out and load.samples == int(held_out * EVAL_SHARE * RUN_SECONDS / every)
    assert planned.eval_seconds == pytest.approx(EVAL_SHARE * RUN_SECONDS, rel=1e-3)
    assert planned.train_seconds == pytest.approx((1 - EVAL_SHARE) * RUN_SECONDS / STEP_DRIFT, rel=1e-3)
    assert planned.steps == ceiling(step, planned.train_seconds)
    assert f"of the {held_out:,} held-out samples, spread over them" in planned.describe()
    assert planned.advice() is None
    # a set of at most FEWEST_EVAL_SAMPLES is evaluated whole, however long that takes
    monkeypatch.setattr(budget, "FEWEST_EVAL_SAMPLES", held_out)
    whole = plan_steps(resolved, Probe(shards, eval_shard(tmp_path, held_out)), PATCH).evaluation
    assert whole == EvalLoad(held_out, EVALUATIONS)
    # a pipeline's own data.max_eval_samples is what a run evaluates, and what is counted
    capped = resolved.with_settings("data", max_eval_samples=per_step)
    load = plan_steps(capped, Probe(shards, eval_shard(tmp_path, held_out)), PATCH).evaluation
    assert load == EvalLoad(per_step, EVALUATIONS)


def test_a_held_out_set_too_big_for_the_budget_leaves_half_the_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, shards, per_step = capped_text_set(tmp_path, monkeypatch)
    huge = eval_shard(tmp_path, 4 * MOST_STEPS * per_step)  # each evaluation as long as all training
    monkeypatch.setattr(budget, "FEWEST_EVAL_SAMPLES", 4 * MOST_STEPS * per_step)  # no subset either
    planned = plan_steps(resolved, Probe(shards, huge), PATCH)
    assert planned.steps == int(LEAST_TRAINING * MOST_STEPS)
    # ... and says so, with the cap that keeps evaluation to a tenth of the run
    advice = planned.advice()
    assert (
        advice is not None and f"evaluating {4 * MOST_STEPS * per_step:,} held-out samples 4 times" in advice
    )
    cap = int(advice.rsplit("data.max_eval_samples: ", 1)[1].split()[0])
    capped_load = EvalLoad(cap, EVALUATIONS).seconds(planned.seconds, per_step)
    assert 0.09 * RUN_SECONDS < capped_load <= 0.1 * RUN_SECONDS


def test_train_minutes_sets_the_budget_the_ceiling_is_counted_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine that steps 4x slower (no fast bf16: 28x28 glyphs at 0.171 s a step in fp32 against
    0.042 in bf16) trains the same recipe for a quarter of the steps in nine minutes; ``train.minutes``
    gives a planned run the time, and it still stops at ``PASSES``."""
    resolved, shards, per_step = capped_text_set(tmp_path, monkeypatch, times=4)
    step = TRAIN_SECONDS / MOST_STEPS
    held_out = eval_shard(tmp_path, 250 * per_step // 4)
    default = plan_steps(resolved, Probe(shards, held_out), PATCH)
    assert default.run_seconds == RUN_SECONDS and default.capped
    longer = plan_steps(resolved.with_settings("train", minutes=36.0), Probe(shards, held_out), PATCH)
    costs = 4 * (250 * per_step // 4) / per_step * step
    assert longer.run_seconds == 36 * 60 and longer.capped
    assert longer.train_seconds == pytest.approx((36 * 60 - costs) / STEP_DRIFT)
    assert longer.steps == ceiling(step, longer.train_seconds) > 4 * default.steps
    assert "the ceiling of a 36-minute run" in longer.describe()
    assert "train.minutes gives the run more time" in longer.describe()
    # ... up to the passes a planned run makes, however long it may take
    ample = plan_steps(resolved.with_settings("train", minutes=600.0), Probe(shards, held_out), PATCH)
    assert not ample.capped and ample.steps == math.ceil(PASSES * ample.samples / per_step)
    # the budget is validated like every setting
    with pytest.raises(ValueError, match="minutes"):
        TrainConfig(minutes=0)


def test_max_eval_samples_are_spread_over_the_held_out_set(tmp_path: Path) -> None:
    """``data.max_eval_samples`` evaluates that many samples spread evenly over the set, not its first
    ones: a set written class by class would otherwise be scored on its first classes only."""
    resolved, _, _ = text_set(tmp_path, 4)
    held_out = eval_shard(tmp_path, 100)
    every = eval_batches(resolved, held_out, SkipLog(quiet=True), PATCH)
    assert [s.key for b in every for s in b.samples] == [f"e{i:05d}" for i in range(100)]
    ten = eval_batches(
        resolved.with_settings("data", max_eval_samples=10), held_out, SkipLog(quiet=True), PATCH
    )
    assert [s.key for b in ten for s in b.samples] == [f"e{i:05d}" for i in range(9, 100, 10)]
    assert spread(3, 7)(0) is False and [i for i in range(7) if spread(3, 7)(i)] == [2, 4, 6]
    # at least as many as the set holds: all of them
    more = resolved.with_settings("data", max_eval_samples=500)
    assert (
        len([s for b in eval_batches(more, held_out, SkipLog(quiet=True), PATCH) for s in b.samples]) == 100
    )


def test_a_planned_subset_is_written_into_the_run_s_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, shards, per_step = capped_text_set(tmp_path, monkeypatch)
    monkeypatch.setattr(budget, "FEWEST_EVAL_SAMPLES", per_step)
    held_out = eval_shard(tmp_path, MOST_STEPS * per_step // 2)
    plan = plan_run(resolved, Probe(shards, held_out))
    assert plan.steps is not None and plan.steps.evaluation.whole == MOST_STEPS * per_step // 2
    assert plan.settings.eval_samples == plan.steps.evaluation.samples
    assert plan.steps.summary()["eval_samples_of"] == MOST_STEPS * per_step // 2
    # a resumed run evaluates what its checkpoint's run did (its pipeline records the number)
    recorded = {"pipeline": plan.settings.applied(resolved).pipeline.model_dump(mode="json")}
    assert recorded_eval_samples(recorded) == plan.steps.evaluation.samples
    assert recorded_eval_samples({"pipeline": {"data": {}}}) is None
    # given steps: nothing planned, every sample evaluated
    given = plan_run(resolved.with_settings("train", steps=10), Probe(shards, held_out))
    assert given.settings.eval_samples is None
