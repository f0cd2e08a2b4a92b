"""Issues 13 and 14: precision policy, packed and aligned rows, learning made visible, metrics sinks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mbp.data.batches import batches, collate
from mbp.sample import EncodedSample
from mbp.train import precision as policy
from mbp.train.watch import BestKeeper, LearningWatch, PaddingWatch, length_advice

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar


def sample(n: int, key: str = "k") -> EncodedSample:
    return EncodedSample("s.tar", key, np.arange(n, dtype=np.int64) % 200, [], np.ones(n, np.float32))


def test_auto_precision_follows_the_cpu_flags(cpu_flags) -> None:
    cpu = torch.device("cpu")
    cpu_flags("avx2 fma")
    assert policy.choose_precision("auto", cpu).precision == "fp32"
    cpu_flags("avx512f amx_bf16")
    assert policy.choose_precision("auto", cpu).precision == "bf16"
    cpu_flags("avx512_bf16")
    assert policy.choose_precision("auto", cpu).precision == "bf16"
    # an explicit setting is honoured whatever the hardware
    assert policy.choose_precision("fp32", cpu).precision == "fp32"
    cpu_flags("")
    assert policy.choose_precision("bf16", cpu).precision == "bf16"


def test_packed_samples_start_on_patch_boundaries() -> None:
    stream = ((sample(n, str(i)), None) for i, n in enumerate([5, 3, 9, 2, 7]))
    out = [b for b, _ in batches(stream, batch_size=2, seq_len=16, pack=True, align=4)]  # type: ignore[misc]
    starts = [s for batch in out for row in batch.starts for s in row]
    assert all(s % 4 == 0 for s in starts)
    first = out[0]
    assert first.starts[0] == [0, 8]  # 5 tokens, padded to 8; then 3 tokens
    assert first.starts[1] == [0, 12]  # 9 tokens take 12 aligned; the 2-token sample follows
    row = first.tokens[0]
    assert (row[5:8] == 256).all()  # PAD between the aligned samples
    assert torch.equal(row[8:11], torch.arange(3))


def test_collate_without_alignment_is_back_to_back() -> None:
    batch = collate([[sample(5), sample(3)]], seq_len=10)
    assert batch.starts == [[0, 5]]


def test_padding_warning_names_the_fix(capsys) -> None:
    watch = PaddingWatch(seq_len=2048, pack=False, after=3)
    for _ in range(3):
        watch.observe(150, 2048)
    assert "93% padding: set data.pack=true" in capsys.readouterr().err
    quiet = PaddingWatch(seq_len=256, pack=True, after=3)
    for _ in range(5):
        quiet.observe(250, 256)
    assert capsys.readouterr().err == ""


def test_length_advice_gives_a_seq_len_that_holds_99_percent() -> None:
    lengths = [100] * 90 + [300] * 9 + [5000]
    line = length_advice(lengths, seq_len=256, patch=8, skipped=10)
    assert line is not None and "10 samples (10.0%)" in line
    assert "data.seq_len=304 would hold 99%" in line  # 99th percentile 300, rounded up to the patch
    assert length_advice(lengths, 256, 8, skipped=0) is None


def test_memorising_is_warned_once(capsys, tmp_path: Path) -> None:
    watch = LearningWatch(tmp_path / "best")
    watch.observe(100, held_out=1.00, train=1.00)
    watch.observe(200, held_out=0.90, train=0.80)
    assert capsys.readouterr().err == ""
    watch.observe(300, held_out=1.10, train=0.50)
    err = capsys.readouterr().err
    assert "held-out loss rose from 0.900 (step 200) to 1.100 (step 300)" in err
    assert "training loss fell from 0.800 to 0.500" in err
    watch.observe(400, held_out=1.30, train=0.30)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("losses", "best_step", "said"),
    [
        ([2.019, 1.914, 1.877], 300, True),  # letters at 600 steps: accuracy 0.910 -> 0.948, still rising
        ([3.602, 3.487, 3.461], 300, False),  # spoken digits: 0.7%, accuracy level at 0.948
        ([0.634, 0.655, 0.685], 300, False),  # digits from pixels: rising (memorising), not learning
        ([2.019, 1.914, 1.877], 200, False),  # the last evaluation was not the best by the head's metric
    ],
)
def test_a_run_that_ends_while_still_learning_says_so(
    tmp_path: Path, losses: list[float], best_step: int, said: bool
) -> None:
    """Issue 14 item 5: a run too short for its set (26 letters from 4,316 glyphs at 600 steps: 0.948
    against logistic regression's 0.989) ends still learning, and the user hears which knob to turn."""
    watch = LearningWatch(tmp_path / "best")
    for step, loss in zip((100, 200, 300), losses, strict=True):
        watch.observe(step, held_out=loss, train=1.0)
    line = watch.at_end(best_step, 300)
    assert (line is not None) == said
    if said:
        assert line == (
            "still learning when the run ended: held-out loss fell 1.9% over the last evaluation "
            "(1.914 to 1.877 at step 300); more train.steps (now 300) would likely help"
        )
        # steps that were the ceiling of the run's minutes: time is the knob, not steps
        assert watch.at_end(best_step, 300, minutes=9.0) == line.replace(
            "more train.steps (now 300) would likely help",
            "a longer run would likely help: train.minutes (now 9) sets its budget",
        )


def test_best_keeper_keeps_the_best_and_survives_a_resume(components, tmp_path: Path) -> None:
    from mbp.config import load_registry

    registry = tmp_path / "r.yaml"
    registry.write_text(REGISTRY)
    pipeline = load_registry(registry).pipeline("qa")
    from mbp.model.build import build_model

    model = build_model(pipeline.model, components)
    keeper = BestKeeper(tmp_path, "accuracy", "max")
    assert keeper.offer(3, {"accuracy": 0.5}, model, "qa", pipeline)
    assert not keeper.offer(6, {"accuracy": 0.4}, model, "qa", pipeline)
    assert not keeper.offer(7, {"accuracy": math.nan}, model, "qa", pipeline)
    assert keeper.offer(9, {"accuracy": 0.7}, model, "qa", pipeline)
    saved = json.loads((tmp_path / "checkpoints" / "best" / "config.json").read_text())["best"]
    assert saved == {"metric": "accuracy", "value": 0.7, "step": 9}
    again = BestKeeper(tmp_path, "accuracy", "max")
    assert again.value == 0.7 and not again.better(0.6) and again.better(0.8)


class RecordingSink:
    def __init__(self, params: object, *, out: Path, resume_step: int | None) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def close(self) -> None:
        self.rows.append({"kind": "closed"})


def test_a_plugin_sink_receives_every_metric_row(components, tmp_path: Path) -> None:
    from mbp.sinks import open_sinks

    components.register("sinks", "test", "recorder", RecordingSink, None)
    try:
        sinks = open_sinks(None, components, tmp_path, None)
        assert any(isinstance(s, RecordingSink) for s in sinks)
    finally:
        del components.entries["sinks"]["recorder"]


def test_run_reports_precision_best_checkpoint_and_held_out_loss(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    write_tar(tmp_path / "train.tar", good_samples("a", 16))
    write_tar(tmp_path / "eval.tar", good_samples("e", 8))
    out = tmp_path / "out"
    args = ["run", "qa", str(tmp_path / "train.tar"), "--registry", str(registry), "--out", str(out)]
    result = invoke_mbp(  # in-process: the run's report and files are the subject
        *args, "--eval-shards", str(tmp_path / "eval.tar"), "--json", "--set", "train.precision=fp32"
    )
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert "mbp: training qa: precision fp32 (set by train.precision)" in first
    assert ", 6 steps, 4 rows a step" in first
    summary = json.loads(result.stdout)
    assert summary["precision"] == "fp32"
    assert summary["best"]["metric"] == "accuracy" and (out / "checkpoints" / "best").is_dir()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held_out = [r for r in evals if r["kind"] == "eval"]
    assert held_out and all(0 < r["loss_bpb"] < 20 for r in held_out)


@pytest.mark.slow
def test_bf16_and_fp32_runs_of_one_seed_end_within_2_percent(tmp_path: Path) -> None:
    """Issue 13: equal quality. The same seed and steps in both precisions; eval bits per byte within 2%."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    write_tar(tmp_path / "train.tar", good_samples("a", 32))
    write_tar(tmp_path / "eval.tar", good_samples("e", 8))
    bpb = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = invoke_mbp(  # in-process: the two runs' losses are the subject, not the CLI
            "run", "qa", str(tmp_path / "train.tar"), "--registry", str(registry), "--out", str(out),
            "--eval-shards", str(tmp_path / "eval.tar"), "--json", "--steps", "30",
            "--set", f"train.precision={precision}", "--set", "train.eval_every=30",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        bpb[precision] = json.loads(result.stdout)["metrics"]["eval_bpb"]
    assert bpb["bf16"] == pytest.approx(bpb["fp32"], rel=0.02)
