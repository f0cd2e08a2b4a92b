"""Issue 11: a run directory is never reused silently; a checkpoint must belong to the pipeline and be
intact to be resumed or evaluated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke_mbp, run_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar

OTHER = """\
  lm:
    fields:
      question: {type: text}
      answer: {type: text}
    head: {type: lm}
    model:
      stages:
        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, seq_len: 4}
    data: {seq_len: 256, batch_size: 4}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One run of 6 steps, a checkpoint every 2 (steps 4 and 6 kept); tests copy it."""
    root = tmp_path_factory.mktemp("trained")
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY + OTHER)
    write_tar(root / "train.tar", good_samples("a", 24))
    result = invoke_mbp(  # in-process: the tests are about what other commands make of this run
        "run", "qa", str(root / "train.tar"), "--registry", str(registry), "--out", str(root / "D")
    )
    assert result.returncode == 0, result.stderr
    return root / "D", str(registry), str(root / "train.tar")


def copy(trained: tuple[Path, str, str], tmp_path: Path) -> Path:
    out = tmp_path / "D"
    shutil.copytree(trained[0], out)
    return out


def run(trained: tuple[Path, str, str], out: Path, *extra: str, pipeline: str = "qa", here: bool = False):
    """``mbp run`` as the mbp process; ``here``: in this process, for a run whose result is checked."""
    _, registry, shard = trained
    args = ("run", pipeline, shard, "--registry", registry, "--out", str(out), "--json", *extra)
    return invoke_mbp(*args) if here else run_mbp(*args)


def test_rerun_into_a_run_folder_is_refused_and_changes_nothing(trained, tmp_path: Path) -> None:
    """Before the fix: exit 0, a printed step-00000003 that did not exist, metrics.jsonl replaced."""
    out = copy(trained, tmp_path)
    metrics = (out / "metrics.jsonl").read_bytes()
    result = run(trained, out, "--steps", "3", "--set", "train.checkpoint_every=1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: --out {out} holds a run (checkpoints up to step 6): "
        "pass --resume to continue it or --overwrite to replace it"
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_overwrite_replaces_the_run(trained, tmp_path: Path) -> None:
    out = copy(trained, tmp_path)
    (out / "notes.txt").write_text("mine")  # not written by a run: kept
    result = run(trained, out, "--steps", "3", "--set", "train.checkpoint_every=1", "--overwrite", here=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["checkpoint"] == str(out / "checkpoints" / "step-00000003")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert (out / "notes.txt").read_text() == "mine"
    both = run(trained, out, "--resume", "--overwrite")
    assert both.returncode == 2 and "--resume and --overwrite contradict each other" in both.stderr


def test_resume_with_another_pipeline_or_other_shapes_names_both(trained, tmp_path: Path) -> None:
    """Before the fix both resumed (exit 0): every sample skipped, or weights loaded into another model."""
    out = copy(trained, tmp_path)
    other = run(trained, out, "--resume", pipeline="lm")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"mbp: error: {out / 'checkpoints' / 'step-00000006'}: checkpoint of pipeline 'qa' (fields "
        "scene: pixels, tone: wav, question: text, answer: text) does not fit pipeline 'lm' "
        "(fields question: text, answer: text)"
    ]
    # the first refusal as the mbp process; this one through the same command in-process
    wider = run(trained, out, "--resume", "--set", "model.stages.0.dim=48", here=True)
    assert wider.returncode == 2
    assert wider.stderr.strip().splitlines() == [
        f"mbp: error: {out / 'checkpoints' / 'step-00000006'}: checkpoint of pipeline 'qa' has model "
        "transformer dim 32 x1 / transformer dim 16 x1 patch 4; "
        "pipeline 'qa' has transformer dim 48 x1 / transformer dim 16 x1 patch 4"
    ]


def test_eval_with_another_pipelines_checkpoint_is_an_error(trained, tmp_path: Path) -> None:
    out, registry, shard = trained
    checkpoint = out / "checkpoints" / "step-00000006"
    result = run_mbp("eval", "lm", shard, "--checkpoint", str(checkpoint), "--registry", registry)
    assert result.returncode == 2
    assert "checkpoint of pipeline 'qa'" in result.stderr and "does not fit pipeline 'lm'" in result.stderr


def test_eval_without_a_usable_sample_fails(trained, tmp_path: Path) -> None:
    """Before the fix: exit 0 and ``metrics: {}``."""
    out, registry, _ = trained
    write_tar(tmp_path / "noanswer.tar", [{"__key__": b"x", "question.txt": b"q?"}])
    checkpoint = str(out / "checkpoints" / "step-00000006")
    result = run_mbp(
        "eval", "qa", str(tmp_path / "noanswer.tar"), "--checkpoint", checkpoint, "--registry", registry
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        f"mbp: error: no usable sample in 1 shard(s) ({tmp_path / 'noanswer.tar'}): 1 missing field"
    )


def test_damaged_newest_checkpoint_is_named_and_the_intact_one_offered(trained, tmp_path: Path) -> None:
    out = copy(trained, tmp_path)
    newest = out / "checkpoints" / "step-00000006"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    leftover = out / "checkpoints" / ".step-00000007.abc123"  # what a kill -9 during a write leaves
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    offered = run(trained, out, "--resume", "--steps", "8")
    assert offered.returncode == 1
    assert (
        offered.stderr.strip()
        .splitlines()[-1]
        .startswith(f"mbp: error: --resume: {newest} is damaged (model.safetensors unreadable (")
    )
    assert offered.stderr.strip().endswith(
        "the newest intact checkpoint is step-00000004: pass --resume-intact to continue from it"
    )
    taken = run(trained, out, "--resume-intact", "--steps", "8", here=True)
    assert taken.returncode == 0, taken.stderr
    assert f"{newest} is damaged" in taken.stderr and "resuming from step-00000004" in taken.stderr
    assert json.loads(taken.stdout)["steps"] == 8
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["damaged-step-00000006", "step-00000006", "step-00000008"]  # the damaged one kept aside
    assert not leftover.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("train_state"), "key train_state: missing (not a training checkpoint)"),
        (
            lambda d: d["train_state"].update(step="6"),
            "key train_state.step: Input should be a valid integer",
        ),
        (
            lambda d: d.update(model=[]),
            "key model: Input should be a valid dictionary or instance of ModelConfig",
        ),
    ],
)
def test_checkpoint_json_with_missing_or_wrong_keys_is_one_line(
    trained, tmp_path: Path, edit, message
) -> None:
    out = copy(trained, tmp_path)
    for step in ("step-00000004", "step-00000006"):
        config = out / "checkpoints" / step / "config.json"
        document = json.loads(config.read_text())
        edit(document)
        config.write_text(json.dumps(document))
    result = run(trained, out, "--resume")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"mbp: error: --resume: {out / 'checkpoints' / 'step-00000006'} is damaged (config.json: {message}) "
        "and no older checkpoint is intact"
    )
    if "train_state" not in message:  # generation needs only the model
        generate = run_mbp("generate", "--checkpoint", str(out / "checkpoints" / "step-00000006"))
        assert generate.returncode == 1 and generate.stderr.strip().splitlines() == [
            f"mbp: error: {out / 'checkpoints' / 'step-00000006' / 'config.json'}: {message}"
        ]
