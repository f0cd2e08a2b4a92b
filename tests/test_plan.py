"""Issue 14: a pipeline that names no ``train.steps`` trains a number of passes over its training set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mbp.data.batches import aligned
from mbp.data.read import RawSample
from mbp.plugins import get_platform
from mbp.resolve import Resolved, resolve
from mbp.train.plan import FEWEST_STEPS, MOST_STEPS, PASSES, plan_steps

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar

PATCH, SEQ_LEN, BATCH = 4, 128, 2
TEXT = f"""\
pipelines:
  lm:
    fields:
      txt: {{type: text}}
    head: {{type: lm}}
    model:
      stages:
        - {{backbone: {{type: transformer, heads: 2}}, dim: 16, layers: 1}}
        - {{backbone: {{type: transformer, heads: 2}}, dim: 16, layers: 1, patch: {PATCH}}}
    data: {{seq_len: {SEQ_LEN}, batch_size: {BATCH}}}
"""


def text_set(tmp_path: Path, count: int) -> tuple[Resolved, list[str], int]:
    """``count`` texts of equal length in two shards; returns the samples a step holds, worked out here."""
    (tmp_path / "registry.yaml").write_text(TEXT)
    resolved = resolve(str(tmp_path / "registry.yaml"), "lm", components=get_platform().components)
    samples = [{"__key__": f"{i:05d}".encode(), "txt": b"a line of text, %05d." % i} for i in range(count)]
    shards = [str(tmp_path / "train-0.tar"), str(tmp_path / "train-1.tar")]
    write_tar(Path(shards[0]), samples[: count // 2])
    write_tar(Path(shards[1]), samples[count // 2 :])
    length = len(resolved.encoder.encode(RawSample("x", "0", {"txt": samples[0]["txt"]})).tokens)
    # each sample starts on a patch boundary, and the last must end within the row
    per_row = (SEQ_LEN - length) // aligned(length, PATCH) + 1
    return resolved, shards, per_row * BATCH


@pytest.mark.parametrize("scale", ["few", "between", "many"])
def test_steps_are_passes_over_the_training_set_within_bounds(tmp_path: Path, scale: str) -> None:
    resolved, shards, per_step = text_set(tmp_path, 1)
    count = {
        "few": 40,  # 6 passes take a handful of steps: the floor
        "between": math.ceil(1000 * per_step / PASSES),  # 1,000 steps
        "many": 3 * math.ceil(MOST_STEPS * per_step / PASSES),  # three times what the ceiling needs
    }[scale]
    resolved, shards, _ = text_set(tmp_path, count)
    plan = plan_steps(resolved, shards, PATCH)
    assert plan.per_step == per_step
    if scale == "few":
        assert (plan.steps, plan.samples) == (FEWEST_STEPS, count)
        assert "600 steps (" in plan.describe() and "over 40 samples" in plan.describe()
    elif scale == "between":
        assert plan.steps == math.ceil(PASSES * count / per_step) and plan.samples == count
        assert FEWEST_STEPS < plan.steps < MOST_STEPS
        assert f"{PASSES:.1f} passes" in plan.describe()
    else:
        assert plan.steps == MOST_STEPS and plan.capped
        # counting stops once the ceiling is sure: a large set is not read through before training
        assert plan.samples == math.ceil(MOST_STEPS * per_step / PASSES) + 1 < count
        assert "set train.steps" in plan.describe()


def test_run_without_steps_plans_them_and_says_so(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    train = REGISTRY[REGISTRY.index("    train:") :]
    registry.write_text(REGISTRY.replace(train, "    train: {log_every: 100}\n"))
    write_tar(tmp_path / "train-0.tar", good_samples("a", 24))
    args = ["run", "qa", str(tmp_path / "train-0.tar"), "--registry", str(registry), "--json"]
    result = invoke_mbp(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # one sample a row (pack: false), 4 rows a step: 24 samples are 6 steps a pass, under the floor
    assert summary["step_plan"] == {"steps": FEWEST_STEPS, "samples": 24, "samples_per_step": 4.0}
    assert summary["steps"] == FEWEST_STEPS
    assert "600 steps (100.0 passes over 24 samples, about 4 a step)" in result.stderr
