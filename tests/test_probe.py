"""A run looks at its data once: every planner and every recount of its steps asks one ``Probe``, which
reads each shard once and counts on from where a count stopped (``mbp.planning.probe``); what the run
settles is one ``RunSettings`` value, written into the pipeline in one place (``mbp.planning.settings``)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mbp.data import read
from mbp.data.read import RawSample
from mbp.data.skips import SkipLog
from mbp.planning.constants import FEWEST_STEPS, PASSES
from mbp.planning.deadline import deadline_of
from mbp.planning.plan import plan_run
from mbp.planning.probe import Probe
from mbp.plugins import get_platform
from mbp.resolve import resolve

from tests.shardkit import lm_registry, write_tar
from tests.test_plan import PATCH, SEQ_LEN, text_set, time_steps_at


def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each shard is opened and read from, from now on."""
    counts: Counter[str] = Counter()
    original = read.shard_samples

    def counting(shard: str, log: SkipLog) -> Iterator[RawSample]:
        counts[shard] += 1
        return original(shard, log)

    monkeypatch.setattr(read, "shard_samples", counting)
    return counts


def test_a_count_goes_on_from_where_the_last_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, shards, _ = text_set(tmp_path, 40)
    counts = opened(monkeypatch)
    probe = Probe(shards)
    counted = [probe.count(most) for most in (5, 3, 30, None, 100)]
    assert counted == [5, 3, 30, 40, 40]
    assert counts == {shards[0]: 1, shards[1]: 1}


def test_planning_a_run_and_counting_its_steps_again_read_each_shard_at_most_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows, steps and three recounts of a run at its ceiling: the set is counted by one reading that
    goes on as far as each count needs, and the rows are measured and packed from another; the
    held-out set is counted once. Each planner reading on its own opened each shard six times."""
    (tmp_path / "registry.yaml").write_text(lm_registry(PATCH, "batch_size: 2"))
    resolved = resolve(str(tmp_path / "registry.yaml"), "lm", components=get_platform().components)
    texts = [{"__key__": f"{i:05d}".encode(), "txt": b"a line of text, %05d." % i} for i in range(3000)]
    shards = [str(tmp_path / "train-0.tar"), str(tmp_path / "train-1.tar")]
    write_tar(Path(shards[0]), texts[:1500])
    write_tar(Path(shards[1]), texts[1500:])
    held_out = str(tmp_path / "eval.tar")
    write_tar(Path(held_out), texts[:50])
    time_steps_at(monkeypatch, 300)
    counts = opened(monkeypatch)
    probe = Probe(shards, [held_out])
    plan = plan_run(resolved, probe)
    assert plan.rows is not None and plan.steps is not None and plan.steps.capped
    deadline = deadline_of(plan.steps, None, probe, 0.0)
    wanted = max(FEWEST_STEPS, math.ceil(PASSES * 3000 / plan.steps.per_step))  # the whole set counted
    assert [deadline.most(steps) for steps in (400, 800, 100_000)][-1] == wanted
    assert counts[held_out] == 1 and all(counts[shard] <= 2 for shard in shards), counts


def test_the_settings_reach_the_pipeline_in_one_place_and_a_recount_changes_only_the_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, shards, _ = text_set(tmp_path, 40)
    time_steps_at(monkeypatch, 400)
    settings = plan_run(resolved, Probe(shards)).settings
    applied = settings.applied(resolved)
    assert (applied.pipeline.data.seq_len, applied.pipeline.train.steps) == (SEQ_LEN, settings.steps)
    assert applied.pipeline.train.precision == settings.precision.precision == "fp32"
    assert resolved.pipeline.train.steps is None  # the pipeline given is left as it was
    recounted = settings.with_steps(settings.steps + 7).applied(applied)
    assert recounted.pipeline.train.steps == settings.steps + 7
    assert recounted.encoder is applied.encoder  # nothing the encoder reads changed
    unchanged = {"model", "data"}
    assert recounted.pipeline.model_dump(include=unchanged) == applied.pipeline.model_dump(include=unchanged)
    varied = dataclasses.replace(settings, augment=True).applied(applied)
    assert varied.pipeline.data.augment is True and varied.encoder is not applied.encoder
