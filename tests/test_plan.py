"""Issue 14: what a pipeline leaves unset is planned from its training data: rows long enough for its
samples, and a number of passes over them."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mbp.data.batches import Position, aligned, batches
from mbp.data.read import RawSample
from mbp.planning import plan, precision_plan
from mbp.planning.budget import TRAIN_SECONDS
from mbp.planning.constants import FEWEST_STEPS, PASSES
from mbp.planning.plan import plan_steps, probe_seconds
from mbp.planning.probe import Probe
from mbp.planning.rows import (
    LONGEST_SPLIT_ROW,
    packed_rows,
    plan_rows,
    row_padding,
    tightest_row,
    with_seq_len,
)
from mbp.plugins import get_platform
from mbp.protocol import PAD
from mbp.resolve import Resolved, resolve
from mbp.sample import EncodedSample
from mbp.train import loop

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, lm_registry, png, qa, tiny_registry, write_tar

PATCH, SEQ_LEN, BATCH = 4, 128, 2
CPU = torch.device("cpu")
QA = {"question": b"what colour?", "answer": b"red"}
TEXT = lm_registry(PATCH, f"seq_len: {SEQ_LEN}, batch_size: {BATCH}")


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


MOST_STEPS = 2000
"""The ceiling these tests set: a step timed at ``TRAIN_SECONDS`` / 2,000 (timings are not tested)."""


def time_steps_at(monkeypatch: pytest.MonkeyPatch, steps: int, count_again: bool = False) -> None:
    """Every measured step takes ``TRAIN_SECONDS / steps``: the ceiling is ``steps``. A run does not
    count its steps again from its own (real) timing unless ``count_again`` (``tests/test_deadline.py``)."""
    for module in (plan, precision_plan):  # where auto precision is timed too (bf16 hardware)
        monkeypatch.setattr(module, "step_seconds", lambda *args: TRAIN_SECONDS / steps)
    if not count_again:
        monkeypatch.setattr(loop, "deadline_of", lambda *args: None)


@pytest.mark.parametrize("scale", ["few", "between", "many"])
def test_steps_are_passes_over_the_training_set_within_bounds(
    tmp_path: Path, scale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    time_steps_at(monkeypatch, MOST_STEPS)
    resolved, shards, per_step = text_set(tmp_path, 1)
    count = {
        "few": 40,  # PASSES passes take a handful of steps: the floor
        "between": math.ceil(1000 * per_step / PASSES),  # 1,000 steps
        "many": 3 * math.ceil(MOST_STEPS * per_step / PASSES),  # three times what the ceiling needs
    }[scale]
    resolved, shards, _ = text_set(tmp_path, count)
    plan = plan_steps(resolved, Probe(shards), PATCH)
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
        described = plan.describe()
        assert "9-minute run" in described and "train.minutes gives the run more time" in described


def test_run_without_steps_plans_them_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    time_steps_at(monkeypatch, MOST_STEPS)  # the floor is under test, not this machine's speed
    registry = tmp_path / "registry.yaml"
    train = REGISTRY[REGISTRY.index("    train:") :]
    registry.write_text(REGISTRY.replace(train, "    train: {log_every: 100}\n"))
    write_tar(tmp_path / "train-0.tar", good_samples("a", 24))
    args = ["run", "qa", str(tmp_path / "train-0.tar"), "--registry", str(registry), "--json"]
    result = invoke_mbp(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # one sample a row (pack: false), 4 rows a step: 24 samples are 6 steps a pass, under the floor
    measured = summary["step_plan"].pop("step_seconds_measured")
    # nothing to evaluate: the whole budget is training time
    assert summary["step_plan"].pop("eval_seconds_estimated") == 0.0
    assert summary["step_plan"].pop("train_seconds_allowed") == round(TRAIN_SECONDS, 1)
    assert summary["step_plan"] == {"steps": FEWEST_STEPS, "samples": 24, "samples_per_step": 4.0}
    assert 0 < measured < 5
    assert summary["steps"] == FEWEST_STEPS
    assert "600 steps (100.0 passes over 24 samples, about 4 a step; " in result.stderr


IMAGES = """\
pipelines:
  photos:
    fields:
      image: {type: pixels}
      question: {type: text}
      answer: {type: text}
    head: {type: vqa}
    model:
      stages:
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1}
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, patch: 8}
"""


def image_set(tmp_path: Path, sides: list[int]) -> str:
    """RGB images of the given sides, one a sample; returns the shard."""
    samples = [qa(f"{i:04d}", **{"image.png": png(side=side)}) for i, side in enumerate(sides)]
    write_tar(tmp_path / "train-0.tar", samples)
    return str(tmp_path / "train-0.tar")


def photos(tmp_path: Path) -> Resolved:
    (tmp_path / "registry.yaml").write_text(IMAGES)
    return resolve(str(tmp_path / "registry.yaml"), "photos", components=get_platform().components)


def tokens(resolved: Resolved, side: int) -> int:
    return len(resolved.encoder.encode(RawSample("x", "0", {"image": png(side=side), **QA})).tokens)


def test_rows_hold_99_percent_of_the_samples_and_about_1024_tokens(tmp_path: Path) -> None:
    resolved = photos(tmp_path)
    overhead = tokens(resolved, 1) - 3
    small = aligned(3 * 8 * 8 + overhead, 8)
    # 8x8 images (192 pixel bytes) pack into about 1,024 tokens, trimmed to the whole samples that fit;
    # 32x32 (3,072) set the row when over 1 in 100
    for sides, expected in [
        ([8] * 200, 1024 // small * small),
        ([8] * 197 + [32] * 3, aligned(3 * 32 * 32 + overhead, 8)),
        ([8] * 198 + [32] * 2, 1024 // small * small),  # 1% of the samples may be left out
    ]:
        planned, plan = plan_rows(resolved, Probe([image_set(tmp_path, sides)]))
        assert plan is not None and planned.pipeline.data.seq_len == plan.seq_len == expected
        assert plan.covered == sum(3 * s * s + overhead <= expected for s in sides) / len(sides)
    # a row within stage 1's most patches, and a given seq_len left alone
    capped = resolved.pipeline.model_copy(deep=True)
    capped.model.stages[0].seq_len = 200
    planned, plan = plan_rows(
        dataclasses.replace(resolved, pipeline=capped), Probe([image_set(tmp_path, [32])])
    )
    assert plan is not None and plan.seq_len == 1600
    given = with_seq_len(resolved, 512)
    assert plan_rows(given, Probe([image_set(tmp_path, [32])])) == (given, None)


def test_short_samples_get_rows_trimmed_to_what_packing_fills() -> None:
    # three 312-token letter glyphs fill 936 of a 1,024-token row: 936 is kept, with no padding
    assert row_padding([312] * 30, 1024, 8) == pytest.approx(88 / 1024)
    assert tightest_row([312] * 30, 1024, 8) == (936, 0.0)
    # one 840-token sample a row: trimmed to the sample
    assert tightest_row([840] * 5, 1024, 8) == (840, 0.0)
    # never below what 99% of the samples need, nor by more than one typical sample (a row keeps its count)
    assert tightest_row([100] * 50, 1024, 8)[0] == 936  # 9 a row, as at 1,024 (8 x 104 + 100 = 932)
    assert tightest_row([950] * 3, 1024, 8)[0] == 952
    assert tightest_row([117] * 50, 1024, 8)[0] == 960  # aligned to 120: 7 x 120 + 117 = 957 used
    # the padding reported is the padding the training packer leaves
    rng = np.random.default_rng(0)
    lengths = rng.integers(150, 700, 300).tolist()
    # mixed lengths keep their rows (a trim packs them differently: spoken words lost accuracy)
    seq_len, padding = tightest_row(lengths, 1024, 8)
    assert seq_len == 1024 and padding == row_padding(lengths, 1024, 8) > 0.2
    assert packed_rows(lengths, 992, 8) > packed_rows(lengths, 1024, 8)  # a trim would pack fewer a row
    assert tightest_row([100] * 49 + [950], 1024, 8)[0] == 1024
    samples = [
        EncodedSample("s", "k", np.ones(n, dtype=np.int64), [], np.ones(n, dtype=np.float32)) for n in lengths
    ]
    packed = batches(((s, Position()) for s in samples), 1, seq_len, pack=True, align=8)
    tokens = np.concatenate([b.tokens.numpy() for b, _ in packed])
    assert float((tokens == PAD).mean()) == pytest.approx(padding)


def test_large_images_train_and_evaluate_without_a_seq_len(tmp_path: Path) -> None:
    """32x32 RGB images are 3,124 tokens each: a fixed 1,024-token row skipped every one of them."""
    row = aligned(tokens(photos(tmp_path), 32), 8)
    shard = image_set(tmp_path, [32] * 12)
    registry = str(tmp_path / "registry.yaml")
    out = tmp_path / "out"
    result = invoke_mbp(
        "run", "photos", shard, "--registry", registry, "--out", str(out), "--steps", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    sample = tokens(photos(tmp_path), 32)
    plan = {"seq_len": row, "covered": 1.0, "padding": round(1 - sample / row, 4)}  # one a row
    assert summary["row_plan"] == plan and summary["samples_skipped"] == 0
    assert f"rows of {row} tokens (100% of 12 samples probed fit; 0% padding)" in result.stderr
    # `mbp eval` on the registry's pipeline (no seq_len) packs rows as the run did
    checkpoint = out / "checkpoints" / "step-00000002"
    evaluated = invoke_mbp(
        "eval", "photos", shard, "--checkpoint", str(checkpoint), "--registry", registry, "--json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["samples_skipped"] == 0
    # a seq_len that is given and too short says what happened and how to fix it
    short = invoke_mbp(
        "run",
        "photos",
        shard,
        "--registry",
        registry,
        "--out",
        str(tmp_path / "o2"),
        "--steps",
        "2",
        "--set",
        "data.seq_len=1024",
    )
    assert short.returncode != 0
    assert short.stderr.splitlines()[-1].endswith(
        f"12 too long (the longest has {tokens(photos(tmp_path), 32)} tokens, over data.seq_len 1024; "
        "unset, data.seq_len is sized to the samples)"
    )


def test_shards_inspect_previews_what_a_run_would_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    time_steps_at(monkeypatch, MOST_STEPS)  # a loaded machine's slow timing must not cap the preview
    row = aligned(tokens(photos(tmp_path), 32), 8)
    shard = image_set(tmp_path, [32] * 12)
    args = ["shards", "inspect", shard, "--pipeline", "photos", "--registry", str(tmp_path / "registry.yaml")]
    report = json.loads(invoke_mbp(*args, "--json").stdout)
    described = report["run"].pop("describe")
    rate = report["run"].pop("data_path")  # timed on the samples the plan read: numbers, not their size
    patches = report["run"].pop("sample_patches")  # the first sample's, 8 tokens each, BOS first
    assert patches[0].startswith("<BOS>") and len(patches) == min(
        24, math.ceil(tokens(photos(tmp_path), 32) / 8)
    )
    assert rate["samples"] > 0 and isinstance(rate["augmented"], bool)
    for name in ("samples_per_s", "mb_per_s", "step_samples_per_s"):
        assert isinstance(rate[name], float) and rate[name] > 0, name
    assert report["run"] == {
        "seq_len": row,
        "steps": FEWEST_STEPS,
        "patch": 8,
        "planned": ["seq_len", "steps"],
    }
    assert described.startswith(  # a sample a row, 8 rows a step; then the step time measured here
        f"rows of {row} tokens (100% of 12 samples probed fit; 0% padding), "
        "600 steps (400.0 passes over 12 samples, about 8 a step; "
    )
    assert described.endswith(", image varied (400.0 passes; data.augment)")  # from 15 passes
    shown = invoke_mbp(*args).stdout
    assert f"  mbp run would train: rows of {row} tokens" in shown
    assert "\n  byte-level patches of the first sample: <BOS>" in shown
    assert re.search(
        r"\n  data path on this machine: [\d,.]+ encoded samples/s, [\d.e+-]+ MB/s of tokens \(the first \d+ "
        r"training samples, shuffled[^)]*\); a step takes [\d,.]+ samples/s\n",
        shown,
    ), shown


def long_texts(tmp_path: Path, head: str, dims: tuple[int, int] = (16, 16)) -> tuple[Resolved, list[str]]:
    """Twenty 5,000-byte texts, unplanned rows, under ``head`` (the inside of its YAML mapping)."""
    registry = tmp_path / f"registry-{dims[0]}.yaml"
    fields = {"txt": "text"} if head == "type: lm" else {"txt": "text", "answer": "text"}
    registry.write_text(tiny_registry("p", fields, head, dims, PATCH))
    resolved = resolve(str(registry), "p", components=get_platform().components)
    shard = tmp_path / "long.tar"
    texts = [{"__key__": f"{i:03d}".encode(), "txt": b"%04d " % i * 1000, "answer": b"a"} for i in range(20)]
    write_tar(shard, texts)
    return resolved, [str(shard)]


def test_a_head_that_splits_samples_plans_rows_of_at_most_2048(tmp_path: Path) -> None:
    resolved, shards = long_texts(tmp_path, "type: lm")
    planned, rows = plan_rows(resolved, Probe(shards))
    assert rows is not None and rows.seq_len == planned.pipeline.data.seq_len == LONGEST_SPLIT_ROW
    assert rows.covered == 0.0 and "longer ones are split across rows" in rows.describe()
    # an answer head needs each sample whole in a row: its rows fit the texts
    resolved, shards = long_texts(tmp_path, "type: vqa, answer_field: answer")
    planned, rows = plan_rows(resolved, Probe(shards))
    assert rows is not None and rows.seq_len > 5000 and rows.covered == 1.0


def test_the_ceiling_is_the_training_time_over_the_measured_step_and_wins_over_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, shards = long_texts(tmp_path, "type: lm")
    planned = with_seq_len(resolved, 256)
    assert 0 < probe_seconds(planned, Probe(shards), PATCH, CPU) < 5  # measured: a tiny model's step
    # steps that take a hundredth of the training time each: 100 steps, under the floor of 600
    time_steps_at(monkeypatch, 100)
    steps = plan_steps(planned, Probe(shards), PATCH)
    assert steps.steps == 100 < FEWEST_STEPS and steps.capped
    assert "train.minutes gives the run more time" in steps.describe()
    assert f"{TRAIN_SECONDS / 100:.3g} s a step measured" in steps.describe()
    # two significant digits: the few percent a timing varies by changes fewer plans
    assert [plan.ceiling(TRAIN_SECONDS / n, TRAIN_SECONDS) for n in (7, 1234.5, 98765)] == [7, 1200, 98000]


def test_timing_a_step_leaves_torchs_random_state_alone(tmp_path: Path) -> None:
    resolved, shards = long_texts(tmp_path, "type: lm")
    before = torch.random.get_rng_state()
    probe_seconds(with_seq_len(resolved, 256), Probe(shards), PATCH, CPU)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_resumed_run_keeps_the_steps_its_first_timing_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps at the ceiling follow a measured step time, which varies between runs: resuming plans again
    but trains to the steps its checkpoint recorded, so the schedule (and exact resume) hold."""
    registry = tmp_path / "registry.yaml"
    train = REGISTRY[REGISTRY.index("    train:") :]
    registry.write_text(REGISTRY.replace(train, "    train: {warmup_steps: 2, checkpoint_every: 2}\n"))
    write_tar(tmp_path / "train-0.tar", good_samples("a", 24))
    args = ["run", "qa", str(tmp_path / "train-0.tar"), "--registry", str(registry), "--json"]
    args += ["--out", str(tmp_path / "out")]
    time_steps_at(monkeypatch, 6)
    first = invoke_mbp(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["steps"] == 6
    time_steps_at(monkeypatch, 12)  # a faster timing now would plan twice the steps
    resumed = invoke_mbp(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["steps"] == 6 and summary["step_plan"]["steps"] == 6
    assert "6 steps (the ceiling of a 9-minute run" in resumed.stderr
