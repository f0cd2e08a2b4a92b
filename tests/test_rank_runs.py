"""``mbp run`` under torchrun with shards split between 2 gloo processes: each names the damage in its
own shards once, the summary counts every process's skips, and a resumed run trains on the very batches
an uninterrupted one does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.shardkit import REGISTRY, corrupt_set, good_samples, write_tar

FLAT = ["--set", "train.warmup_steps=0", "--set", "train.min_lr_ratio=1", "--set", "train.precision=fp32"]
"""A constant learning rate: a run of 4 steps resumed to 6 follows the schedule of one run of 6."""


def torchrun(folder: Path, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    shards = sorted(str(p) for p in folder.glob("*/*.tar")) + sorted(str(p) for p in folder.glob("*.tar"))
    launcher = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run = ["-m", "mbp.cli", "run", "qa", *shards, "--registry", str(folder / "registry.yaml")]
    run += ["--out", str(folder / out), "--json", *FLAT, *extra]
    command = [launcher, "--nproc_per_node=2", f"--master_port={free_port()}", *run]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def losses(folder: Path, out: str) -> list[float]:
    rows = [json.loads(line) for line in (folder / out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row["kind"] == "train"]


@pytest.mark.slow
def test_two_processes_split_the_shards_count_every_skip_and_resume_exactly(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    corrupt_set(tmp_path / "damaged")  # 3 shards: 5 good samples, 4 skipped, 2 failed shards
    write_tar(tmp_path / "train-0.tar", good_samples("a", 40))
    write_tar(tmp_path / "train-1.tar", good_samples("b", 40))
    whole = torchrun(tmp_path, "whole", "--set", "train.steps=6")
    assert whole.returncode == 0, whole.stderr
    assert "data positions" not in whole.stderr  # a fresh run has no checkpoint to speak of
    summary = json.loads(whole.stdout)
    assert summary["samples_skipped"] == 4 and sorted(summary["failed_shards"]) == [
        "b-truncated.tar",
        "c-notatar.tar",
    ]
    # two processes share stderr: a warning may land after rank 0's progress line, not at a line start
    warnings = re.findall(r"mbp: warning: s[^\r\n]*", whole.stderr)
    assert len(warnings) == 6 and len(set(warnings)) == 6  # 4 samples and 2 shards, each named once

    first = torchrun(tmp_path, "resumed", "--set", "train.steps=4")
    assert first.returncode == 0, first.stderr
    config = json.loads((tmp_path / "resumed" / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert len(config["train_state"]["ranks"]) == 2  # every process's position
    second = torchrun(tmp_path, "resumed", "--set", "train.steps=6", "--resume")
    assert second.returncode == 0, second.stderr
    assert losses(tmp_path, "resumed") == losses(tmp_path, "whole")
