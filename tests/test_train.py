"""Issue 6: `mbp run`: summary, checkpoints, exact resume after kill -9, failures, DDP."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mbp.atomic import write_dir_atomically
from mbp.model.build import build_model
from mbp.resolve import resolve
from safetensors.torch import load_file

from tests.conftest import free_port, invoke_mbp, run_mbp
from tests.shardkit import REGISTRY, corrupt_set, good_samples, png, qa, write_tar


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[str, list[str], str]:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    write_tar(tmp_path / "train-0.tar", good_samples("a", 24))
    write_tar(tmp_path / "train-1.tar", good_samples("b", 24))
    write_tar(tmp_path / "eval-0.tar", good_samples("e", 8))
    return (
        str(registry),
        [str(tmp_path / "train-0.tar"), str(tmp_path / "train-1.tar")],
        str(tmp_path / "eval-0.tar"),
    )


def run_args(registry: str, shards: list[str], out: Path, *extra: str) -> list[str]:
    """``mbp.cli run qa SHARDS --registry R --out OUT --json EXTRA``, for python -m or torchrun -m."""
    return ["mbp.cli", "run", "qa", *shards, "--registry", registry, "--out", str(out), "--json", *extra]


def run(registry: str, shards: list[str], out: Path, *extra: str, env: dict[str, str] | None = None):
    return run_mbp(*run_args(registry, shards, out, *extra)[1:], env=env)


def run_here(registry: str, shards: list[str], out: Path, *extra: str):
    """The same run in this process: for runs whose weights or metrics a test compares, not its CLI."""
    return invoke_mbp(*run_args(registry, shards, out, *extra)[1:])


def test_run_prints_one_summary_and_writes_metrics_plot_checkpoint(setup, tmp_path: Path) -> None:
    registry, shards, evals = setup
    damaged = corrupt_set(tmp_path / "damaged")
    result = run(registry, damaged + shards, tmp_path / "out", "--eval-shards", evals)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"pipeline", "steps", "samples_seen", "samples_skipped", "metrics", "checkpoint"} <= set(summary)
    assert summary["pipeline"] == "qa" and summary["steps"] == 6 and summary["samples_seen"] == 24
    assert summary["samples_skipped"] == 4  # the damaged set: 3 bad samples + 1 cut short
    assert summary["failed_shards"] == ["b-truncated.tar", "c-notatar.tar"]
    assert {"eval_bpb", "accuracy", "majority_baseline"} <= set(summary["metrics"])
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == "step-00000006"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
    ]
    # keep 2, plus the best by held-out accuracy
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best", "step-00000004", "step-00000006"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6]
    # every row says when it was written (seconds since the run began), an evaluation what it took
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    for before, row in itertools.pairwise(rows):
        if row["kind"] == "eval":  # written after the evaluation: its time lies within the gap
            gap = row["elapsed_s"] - before["elapsed_s"]
            assert 0 < row["eval_seconds"] <= gap + 0.002  # each written to the millisecond
    assert (tmp_path / "out" / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "\r" not in result.stderr  # progress is hidden when stderr is not a terminal


BOUNDARIES = ["--set", "model.boundaries=codecs", "--set", "model.stages.1.patch=null"]
"""Byte-level patches that follow the data (words, rows, frames) instead of the pipeline's fixed 4."""


@pytest.mark.parametrize("patches", ["fixed", "boundaries"])
def test_resume_after_kill_9_reaches_the_same_weights(setup, tmp_path: Path, patches: str) -> None:
    registry, shards, _ = setup
    settings = [
        *(BOUNDARIES if patches == "boundaries" else []),
        "--set",
        "train.steps=30",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.keep_checkpoints=3",
        "--set",
        "data.shuffle_buffer=8",
    ]
    straight = run_here(registry, shards, tmp_path / "straight", *settings)  # the killed one: a process
    assert straight.returncode == 0, straight.stderr
    assert ("boundaries: " in straight.stderr) == (patches == "boundaries")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", *run_args(registry, shards, out, *settings)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # steps of this tiny model take milliseconds once its fields are encoded (FieldCache): kill early
    while time.time() < deadline and not (out / "checkpoints" / "step-00000003").exists():
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted((out / "checkpoints").iterdir())
    assert done and done[-1].name < "step-00000030", "the run must be killed before it finishes"
    resumed = run_here(registry, shards, out, *settings, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000030" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-00000030" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    assert json.loads(resumed.stdout)["samples_seen"] == json.loads(straight.stdout)["samples_seen"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 31))  # no step twice


def test_unwritable_out_fails_clearly(setup, tmp_path: Path) -> None:
    registry, shards, _ = setup
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(registry, shards, blocker / "out")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: --out {blocker / 'out'}: cannot write there (Not a directory)"
    ]


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    write_dir_atomically(target, lambda d: (d / "a").write_text("good"))

    def full_disk(folder: Path) -> None:
        (folder / "a").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_dir_atomically(target, full_disk)
    assert (target / "a").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind


def test_missing_plugin_fails_before_training(setup, tmp_path: Path) -> None:
    registry, shards, _ = setup
    text = (
        Path(registry).read_text().replace("{type: transformer, heads: 2}, dim: 32", "{type: mamba}, dim: 32")
    )
    Path(registry).write_text(text)
    result = run(registry, shards, tmp_path / "out", env={"MBP_DISABLE_PLUGINS": "mamba"})
    assert result.returncode == 2
    assert "unknown backbone 'mamba'" in result.stderr
    assert "a plugin that registers backbone 'mamba' is needed" in result.stderr
    assert (
        "plugin 'mamba' is installed but did not register it; disabled by MBP_DISABLE_PLUGINS: mamba"
        in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_resume_without_checkpoint_is_an_error(setup, tmp_path: Path) -> None:
    registry, shards, _ = setup
    result = run(registry, shards, tmp_path / "out", "--resume")
    assert result.returncode == 1 and "--resume: no checkpoint in" in result.stderr


def test_a_stray_rank_variable_leaves_a_plain_run_its_summary(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone RANK (torchrun sets it with WORLD_SIZE and the rest) once hid a plain run's summary."""
    registry, shards, _ = setup
    for name in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    plain = run_here(registry, shards, tmp_path / "plain", "--steps", "2")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["steps"] == 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # but no rendezvous to join: not started by torchrun
    half = run_here(registry, shards, tmp_path / "half", "--steps", "2")
    assert half.returncode == 2 and half.stdout == ""
    assert half.stderr.strip().splitlines() == [
        "mbp: error: WORLD_SIZE=2 asks for a distributed run, but MASTER_ADDR, MASTER_PORT are unset: "
        "start it with torchrun, or unset WORLD_SIZE for a single process"
    ]
    assert not (tmp_path / "half").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "patches"), [("ddp", "fixed"), ("fsdp", "fixed"), ("fsdp", "boundaries")]
)
def test_two_process_gloo_matches_one_process(setup, tmp_path: Path, strategy: str, patches: str) -> None:
    registry, shards, _ = setup
    settings = [
        *(BOUNDARIES if patches == "boundaries" else []),
        "--set",
        "train.steps=4",
        "--set",
        "train.warmup_steps=0",
        "--set",
        f"train.strategy={strategy}",
    ]
    single = run_here(registry, shards, tmp_path / "one", *settings)  # a world of one: no process group
    assert single.returncode == 0, single.stderr
    assert ("boundaries: " in single.stderr) == (patches == "boundaries")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    double = subprocess.run(
        [
            torchrun,
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            *run_args(registry, shards, tmp_path / "two", *settings),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr
    assert json.loads(double.stdout)["steps"] == 4  # one summary: rank 0 speaks for the run
    losses = {}
    for name in ("one", "two"):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if r["kind"] == "train"]
    # Same global batch of the same samples; each process averages over its own tokens, so the mean
    # of the two means differs slightly from the mean over all tokens.
    assert losses["one"][0] == pytest.approx(losses["two"][0], rel=0.02)
    for one, two in zip(losses["one"], losses["two"], strict=True):
        assert one == pytest.approx(two, rel=0.05)


def test_eval_and_generate_from_a_checkpoint(setup, tmp_path: Path) -> None:
    registry, shards, evals = setup
    trained = run_here(registry, shards, tmp_path / "out", "--steps", "2")
    checkpoint = json.loads(trained.stdout)["checkpoint"]
    # in-process: what the commands compute; the last failure (no traceback) runs as the mbp process
    scored = invoke_mbp("eval", "qa", evals, "--checkpoint", checkpoint, "--registry", registry, "--json")
    assert scored.returncode == 0, scored.stderr
    document = json.loads(scored.stdout)
    assert document["metrics"]["eval_samples"] == 8 and 0 <= document["metrics"]["accuracy"] <= 1
    text = invoke_mbp(
        "generate", "--checkpoint", checkpoint, "--field", "question=what colour?", "--max-bytes", "5"
    )
    assert text.returncode == 0, text.stderr
    assert "generated" in text.stderr and text.stdout.endswith("\n")
    files = invoke_mbp(
        "generate",
        "--checkpoint",
        checkpoint,
        "--field",
        "question=q",
        "--max-bytes",
        "12",
        "--seed",
        "1",
        "--temperature",
        "1.0",
        "--out",
        str(tmp_path / "gen"),
    )
    assert files.returncode == 0, files.stderr
    written = json.loads(files.stdout)["files"]
    assert written and all(Path(f).exists() for f in written)
    missing = invoke_mbp("generate", "--checkpoint", checkpoint, "--field", "scene=@/nonexistent.png")
    assert missing.returncode == 2 and "cannot read /nonexistent.png" in missing.stderr
    bad = run_mbp("generate", "--checkpoint", str(tmp_path))
    assert bad.returncode == 1 and "not a checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_grad_accumulation_and_bf16_runs(setup, tmp_path: Path, components) -> None:
    registry, _, _ = setup

    def distinct(name: str, offset: int) -> str:
        """A shard of four samples that all differ (colour, question, answer)."""
        words = ["red", "green", "blue", "yellow", "cyan", "pink", "grey", "brown"]
        samples = []
        for i in range(4):
            k = i + offset
            fields = {
                "scene.png": png((30 * k, 250 - 30 * k, 60)),
                "question.txt": f"question {k}?".encode(),
                "answer.txt": words[k].encode(),
            }
            samples.append(qa(f"{name}{i}", **fields))
        write_tar(tmp_path / f"{name}.tar", samples)
        return str(tmp_path / f"{name}.tar")

    same, other = [distinct("same", 0)], [distinct("other", 4)]
    one_step = ["--steps", "1", "--set", "train.warmup_steps=0", "--set", "train.clip=null"]
    halves_args = ["--set", "data.batch_size=2"]
    runs = {
        "whole": run_here(registry, same, tmp_path / "whole", *one_step),
        "halves": run_here(
            registry, same, tmp_path / "halves", *one_step, *halves_args, "--set", "train.grad_accum=2"
        ),
        "first half": run_here(registry, same, tmp_path / "first half", *one_step, *halves_args),
        "other": run_here(registry, other, tmp_path / "other", *one_step),
    }
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    torch.manual_seed(0)  # the trainer's seed: the same initial weights
    resolved = resolve(registry, "qa", components=components)
    initial = build_model(resolved.pipeline.model, components).state_dict()

    def update(name: str) -> torch.Tensor:
        weights = load_file(str(tmp_path / name / "checkpoints" / "step-00000001" / "model.safetensors"))
        return torch.cat([(weights[k] - initial[k]).flatten() for k in sorted(weights)])

    def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
        moved = (a != 0) | (b != 0)
        return float((a.sign() == b.sign())[moved].float().mean())

    # Adam's first step is nearly sign(gradient): two accumulated halves must point where one batch of
    # the same four samples points, more closely than either half alone or a batch of other samples
    whole = update("whole")
    halves = agreement(whole, update("halves"))
    assert halves > 0.9
    assert agreement(whole, update("first half")) < halves - 0.05
    assert agreement(whole, update("other")) < halves - 0.15
    half = run_here(registry, same, tmp_path / "bf16", "--steps", "2", "--set", "train.bf16=true")
    assert half.returncode == 0, half.stderr
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows if r["kind"] == "train")


def test_no_usable_sample_stops_instead_of_looping(setup, tmp_path: Path) -> None:
    registry, shards, _ = setup
    result = run_mbp(
        *run_args(registry, shards, tmp_path / "out", "--set", "data.seq_len=8")[1:], timeout=120
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "48 too long (the longest has 105 tokens, over data.seq_len 8; "
        "unset, data.seq_len is sized to the samples)"
    )


def test_component_that_cannot_be_built_is_a_config_error(setup, tmp_path: Path) -> None:
    registry, shards, _ = setup
    result = run(registry, shards, tmp_path / "out", "--set", "model.stages.0.backbone.heads=3")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mbp: error: backbone 'transformer' (heads=3, dropout=0.1, dim=32, layers=1) cannot be built: "
        "transformer width 32 is not divisible by heads=3"
    )


def test_progress_shows_on_a_terminal(setup, tmp_path: Path) -> None:
    import pty

    registry, shards, _ = setup
    leader, follower = pty.openpty()
    args = [sys.executable, "-m", *run_args(registry, shards, tmp_path / "out", "--steps", "3")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    stdout, _ = process.communicate(timeout=300)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    err = b"".join(chunks).decode()
    assert process.returncode == 0 and json.loads(stdout)["steps"] == 3
    assert "\rstep 3/3  loss " in err and "bytes/s  ETA " in err
