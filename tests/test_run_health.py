"""A run that cannot go on says so: divergence stops it at its step, a resume that changes the run or
cannot train names why, and a checkpoint of another model is not evaluated under a pipeline."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port, invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("health")
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY)
    write_tar(root / "train.tar", good_samples("a", 24))
    return str(registry), str(root / "train.tar")


def run(setup: tuple[str, str], out: Path, *extra: str):
    registry, shard = setup
    return invoke_mbp("run", "qa", shard, "--registry", registry, "--out", str(out), "--json", *extra)


def finite_files(out: Path) -> dict[str, bool]:
    """Each checkpoint folder's name: whether every tensor it saved is finite."""
    found: dict[str, bool] = {}
    for folder in sorted((out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []:
        tensors = [t for f in folder.glob("*.safetensors") for t in load_file(str(f)).values()]
        found[folder.name] = all(bool(t.isfinite().all()) for t in tensors if t.is_floating_point())
    return found


@pytest.mark.parametrize(("every", "kept"), [(1, "step-00000001"), (2, None)])
def test_a_diverging_run_stops_at_its_step_and_names_the_last_finite_checkpoint(
    setup, tmp_path: Path, every: int, kept: str | None
) -> None:
    """``train.lr=1e6`` once trained NaN from step 3 on, wrote checkpoints of NaN, printed one as its
    result and exited 0. Its step 2 has a finite loss but no finite gradient: the step stops there."""
    out = tmp_path / "out"
    settings = ["--set", "train.lr=1e6", "--set", f"train.checkpoint_every={every}"]
    result = run(setup, out, *settings, "--set", "train.precision=fp32")  # auto may pick either by timing
    assert result.returncode == 1 and result.stdout == ""
    back = (
        f"the last finite checkpoint is {out / 'checkpoints' / kept}"
        if kept
        else ("no checkpoint was saved before it")
    )
    # the loss is finite (63454.2 in fp32 on the EPYC); the gradient's norm is not
    pattern = r"mbp: error: training diverged at step 2 \(loss [0-9.e+]+, gradient norm nan\): (.*)"
    found = re.fullmatch(pattern, result.stderr.strip().splitlines()[-1])
    assert found and found.group(1) == f"{back}; a lower train.lr (now 1e+06) may help"
    assert finite_files(out) == ({kept: True} if kept else {})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1]  # the diverged step is not logged


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_every_process_of_a_diverging_run_stops_at_the_same_step(
    setup, tmp_path: Path, strategy: str
) -> None:
    """The step's health is agreed over the processes: none waits forever for one that stopped. The
    two processes are started as torchrun starts them, but without its agent, which stops the other
    process as soon as one exits, sometimes before that one could say why."""
    registry, shard = setup
    args = ["run", "qa", shard, "--registry", registry, "--out", str(tmp_path / "out"), "--json"]
    settings = [
        "train.lr=1e6",
        "train.precision=fp32",
        "train.checkpoint_every=1",
        f"train.strategy={strategy}",
    ]
    command = [sys.executable, "-m", "mbp.cli", *args] + [w for s in settings for w in ("--set", s)]
    port = str(free_port())
    processes = [
        subprocess.Popen(
            command,
            env={**os.environ, **rendezvous(rank, 2, port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        results = [(process.communicate(timeout=300), process.returncode) for process in processes]
    finally:
        for process in processes:
            process.kill()  # one that hangs must not outlive the test
    for (stdout, stderr), code in results:
        assert code == 1 and stdout == "", stderr
    stops = [re.findall(r"mbp: error: training diverged at step (\d+)", err) for (_, err), _ in results]
    assert [len(found) for found in stops] == [1, 1] and stops[0] == stops[1], stops  # the same step
    assert all(finite_files(tmp_path / "out").values())


def rendezvous(rank: int, world: int, port: str) -> dict[str, str]:
    """The environment torchrun gives process ``rank`` of ``world`` on one machine."""
    ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    place = {"LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    return {**ranks, **place, "OMP_NUM_THREADS": "1"}


def test_a_checkpoint_is_never_written_with_a_non_finite_tensor(tmp_path: Path) -> None:
    from mbp.train.checkpoint import first_nonfinite

    weights = {"a": torch.ones(3), "steps": torch.tensor([4])}
    assert (
        first_nonfinite(weights, {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(2.0)}}})
        is None
    )
    assert first_nonfinite({**weights, "b": torch.tensor([1.0, float("inf")])}, {}) == "weight b"
    overflowed = {"state": {0: {"exp_avg": torch.zeros(3)}, 1: {"exp_avg_sq": torch.tensor([float("nan")])}}}
    assert first_nonfinite(weights, overflowed) == "optimizer state 1.exp_avg_sq"


def test_the_gradient_norm_is_read_with_clipping_or_without() -> None:
    """Without ``train.clip`` the norm is still read: a NaN gradient must stop the step all the same."""
    from mbp.train.distributed import grad_norm

    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert float(grad_norm(model, None)) == 5.0 and model.weight.grad.tolist() == [[3.0, 4.0]]
    assert float(grad_norm(model, 1.0)) == 5.0  # the norm before clipping
    assert float(model.weight.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    model.weight.grad = torch.tensor([[float("nan"), 0.0]])
    assert math.isnan(float(grad_norm(model, None)))


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 6 steps with checkpoints at 4 and 6 (of data.batch_size 4, train.lr 0.002); tests copy it."""
    out = tmp_path_factory.mktemp("trained") / "D"
    result = run(setup, out)
    assert result.returncode == 0, result.stderr
    return out


def copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "D")
    return tmp_path / "D"


def test_resume_names_each_setting_it_changes_and_goes_on(setup, trained: Path, tmp_path: Path) -> None:
    """A resume with another batch size and learning rate once went on without a word, though it no
    longer trained as the uninterrupted run would have; more steps alone change nothing of the kind."""
    out = copy(trained, tmp_path)
    changed = run(
        setup, out, "--resume", "--steps", "7", "--set", "train.lr=0.001", "--set", "data.batch_size=8"
    )
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["steps"] == 7
    assert [line for line in changed.stderr.splitlines() if "--resume" in line] == [
        "mbp: warning: --resume from step-00000006 changes data.batch_size 4 -> 8, train.lr 0.002 -> 0.001: "
        "training goes on with the new settings, no longer as the uninterrupted run would have"
    ]
    longer = run(
        setup, out, "--resume", "--steps", "8", "--set", "train.lr=0.001", "--set", "data.batch_size=8"
    )
    assert longer.returncode == 0 and json.loads(longer.stdout)["steps"] == 8
    assert "--resume from" not in longer.stderr  # the settings step-00000007 recorded


def test_resume_below_the_checkpoints_step_is_refused(setup, trained: Path, tmp_path: Path) -> None:
    """``--resume --steps 4`` from step 6 once trained nothing and exited 0 without a word."""
    out = copy(trained, tmp_path)
    result = run(setup, out, "--resume", "--steps", "4")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "mbp: error: --resume: step-00000006 is at step 6, past train.steps 4: nothing would train; "
        "pass --steps above 6 to train on"
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]


@pytest.mark.parametrize(
    ("old", "new", "refusal"),
    [
        (
            "heads: 2}, dim: 32",
            "heads: 4}, dim: 32",
            "model.stages.0.backbone.heads: checkpoint has 2, the pipeline 4",
        ),
        ("dim: 32", "dim: 48", "model.stages.0.dim: checkpoint has 32, the pipeline 48"),
        (
            "layers: 1, seq_len: 4",
            "layers: 2, seq_len: 4",
            "model.stages.1.layers: checkpoint has 1, the pipeline 2",
        ),
        (
            "layers: 1, seq_len: 4",
            "layers: 1, seq_len: 2",
            "model.stages.1.patch: checkpoint has 4, the pipeline 2",
        ),
        ("layers: 1, seq_len: 4", "layers: 1", None),  # a byte-level patch left unset is the checkpoint's
        ("    model:\n", "    model:\n      dropout: 0.3\n", None),  # rates change training, not the model
    ],
)
def test_eval_refuses_a_checkpoint_of_another_model(
    setup, trained: Path, tmp_path: Path, old: str, new: str, refusal: str | None
) -> None:
    """A checkpoint of another model with the same fields was once evaluated as the pipeline's."""
    registry, shard = setup
    changed = tmp_path / "registry.yaml"
    changed.write_text(Path(registry).read_text().replace(old, new, 1))
    checkpoint = trained / "checkpoints" / "step-00000006"
    result = invoke_mbp(
        "eval", "qa", shard, "--checkpoint", str(checkpoint), "--registry", str(changed), "--json"
    )
    if refusal is None:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["metrics"]["bpb"] > 0
        return
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: {checkpoint}: checkpoint of pipeline 'qa' is not a model of pipeline 'qa': {refusal}"
    ]
