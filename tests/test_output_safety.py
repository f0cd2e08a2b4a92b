"""Issue 40: nothing a user owns is deleted. ``--force`` and ``--overwrite`` replace only mbp's own files,
refuse a folder that is or holds the working directory or an input, and read initial weights first;
a run holds a lock on its ``--out``; a run that ends before its first step leaves a folder a plain
re-run takes; ``generate --out`` checks the folder before generating."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mbp.atomic import write_dir_atomically
from mbp.config import ModelConfig
from mbp.errors import MbpError
from mbp.model.build import build_model
from mbp.model.checkpoint_files import save_model
from mbp.outdir import check_writable
from mbp.train.outlock import LOCK, OutputBusyError, holding

from tests.conftest import ROOT, invoke_mbp, stage
from tests.shardkit import REGISTRY, good_samples, write_tar

MBLM = ROOT / "tests" / "fixtures" / "mblm" / "one-stage"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A run of 2 steps with a held-out set: ``checkpoints/step-00000002`` and ``checkpoints/best``."""
    root = tmp_path_factory.mktemp("trained")
    # fp32 named: "auto" times both precisions first, the slowest part of a tiny run
    (root / "registry.yaml").write_text(REGISTRY.replace("train: {", "train: {precision: fp32, "))
    write_tar(root / "train.tar", good_samples("a", 12))
    shard = str(root / "train.tar")
    args = ("run", "qa", shard, "--registry", str(root / "registry.yaml"), "--out", str(root / "D"))
    result = invoke_mbp(*args, "--steps", "2", "--eval-shards", shard)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (root / "D" / "checkpoints").iterdir()) == ["best", "step-00000002"]
    return root / "D", str(root / "registry.yaml"), shard


def run(trained: tuple[Path, str, str], out: Path, *extra: str):
    _, registry, shard = trained
    return invoke_mbp("run", "qa", shard, "--registry", registry, "--out", str(out), "--json", *extra)


def copy(trained: tuple[Path, str, str], tmp_path: Path) -> Path:
    out = tmp_path / "D"
    shutil.copytree(trained[0], out)
    return out


def fill(**contents: str) -> Callable[[Path], None]:
    """A ``write_dir_atomically`` filler writing ``contents`` (file name: text)."""

    def write(folder: Path) -> None:
        for name, text in contents.items():
            (folder / name).write_text(text)

    return write


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- replacing a checkpoint folder -------------------------------------------------------------------


def test_a_folder_with_other_files_keeps_them_and_gets_the_new_ones(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "a").write_text("old")
    (target / "notes.txt").write_text("mine")
    write_dir_atomically(target, fill(a="new"))
    assert (target / "a").read_text() == "new"
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folder left


def test_a_folder_of_only_the_files_it_gets_anew_is_swapped_whole(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    write_dir_atomically(target, fill(a="old", b="old"))
    folder = target.stat().st_ino
    write_dir_atomically(target, fill(a="new", b="new"))
    assert target.stat().st_ino != folder  # a new folder renamed in: no moment with old and new mixed
    assert [(target / n).read_text() for n in files(target)] == ["new", "new"]
    write_dir_atomically(target, fill(a="newer"))
    assert [(target / n).read_text() for n in files(target)] == ["newer", "new"]  # b is not its to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_linked_folder_gets_the_new_files_through_the_link(tmp_path: Path) -> None:
    """Swapping the link whole would rename the link and empty the folder it points to."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a").write_text("old")
    (tmp_path / "ckpt").symlink_to(tmp_path / "real")
    write_dir_atomically(tmp_path / "ckpt", fill(a="new"))
    assert (tmp_path / "ckpt").is_symlink() and (tmp_path / "real" / "a").read_text() == "new"


def test_the_working_directory_as_target_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: the working directory emptied recursively, then OSError 'Invalid argument'."""
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    (here / "sub" / "deep.txt").write_text("mine")
    monkeypatch.chdir(here)
    write_dir_atomically(Path("."), fill(a="new"))
    assert files(here) == ["a", "sub/deep.txt"]


# --- mbp import mblm --force -------------------------------------------------------------------------


def import_mblm(config: Path, weights: Path, out: str, *extra: str):
    return invoke_mbp("import", "mblm", str(config), str(weights), out, *extra)


def test_import_force_into_the_working_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: the working directory emptied, then OSError."""
    (tmp_path / "work" / "sub").mkdir(parents=True)
    (tmp_path / "work" / "sub" / "mine.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "work" / "sub")
    for out in (".", str(tmp_path / "work")):
        result = import_mblm(MBLM / "config.yaml", MBLM / "weights.pth", out, "--force")
        assert result.returncode == 2
        shown = "is the working directory" if out == "." else f"holds the working directory {Path.cwd()}"
        assert result.stderr.strip().splitlines() == [
            f"mbp: error: OUT_DIR {out} {shown}: name a folder of its own"
        ]
    assert files(tmp_path / "work") == ["sub/mine.txt"]


def test_import_force_into_the_folder_of_its_inputs_is_refused(tmp_path: Path) -> None:
    """Before the fix: exit 0, and the folder held only the new files."""
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("config.yaml", "weights.pth"):
        shutil.copy(MBLM / name, folder / name)
    result = import_mblm(folder / "config.yaml", folder / "weights.pth", str(folder), "--force")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: OUT_DIR {folder} holds the input {folder / 'config.yaml'}: write to another folder"
    ]
    assert files(folder) == ["config.yaml", "weights.pth"]


def test_import_force_replaces_the_checkpoint_and_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert import_mblm(MBLM / "config.yaml", MBLM / "weights.pth", str(out)).returncode == 0
    first = (out / "model.safetensors").read_bytes()
    (out / "notes.txt").write_text("mine")
    (out / "model.safetensors").write_bytes(b"stale")
    result = import_mblm(MBLM / "config.yaml", MBLM / "weights.pth", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert files(out) == ["config.json", "model.safetensors", "notes.txt", "registry.yaml"]
    assert (out / "model.safetensors").read_bytes() == first
    assert (out / "notes.txt").read_text() == "mine"
    assert f"mbp: {out}: kept 1 item(s) mbp does not write: notes.txt" in result.stderr


# --- mbp run --overwrite ----------------------------------------------------------------------------


def test_overwrite_reads_initial_weights_from_the_run_it_replaces(trained, tmp_path: Path) -> None:
    """Before the fix: checkpoints removed first, then 'not a checkpoint': the old run lost for nothing."""
    out = copy(trained, tmp_path)
    best = out / "checkpoints" / "best"
    result = run(trained, out, "--steps", "1", "--overwrite", "--init-from", str(best))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint"] == str(out / "checkpoints" / "step-00000001")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1]


def test_overwrite_removes_only_what_a_run_wrote(trained, tmp_path: Path) -> None:
    """Before the fix: ``checkpoints`` was removed whole, the user's files in it too."""
    out = copy(trained, tmp_path)
    (out / "checkpoints" / "mine.txt").write_text("mine")
    (out / "checkpoints" / "step-00000002" / "notes.txt").write_text("mine")
    (out / "checkpoints" / "saved").mkdir()
    (out / "checkpoints" / "saved" / "model.safetensors").write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.safetensors").write_text("mine")
    (out / "checkpoints" / "damaged-step-00000001").symlink_to(tmp_path / "elsewhere")  # mbp makes no links
    result = run(trained, out, "--steps", "1", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "model.safetensors").read_text() == "mine"
    assert (out / "checkpoints" / "damaged-step-00000001").is_symlink()
    assert files(out / "checkpoints") == [
        "mine.txt",
        "saved/model.safetensors",
        "step-00000001/config.json",
        "step-00000001/model.safetensors",
        "step-00000001/optimizer.safetensors",
        "step-00000002/notes.txt",
    ]
    assert (
        f"mbp: --overwrite kept 4 item(s) in {out / 'checkpoints'} that a run does not write: "
        "damaged-step-00000001, mine.txt, saved and 1 more"
    ) in result.stderr


def test_overwrite_of_the_working_directory_is_refused(trained, tmp_path: Path, monkeypatch) -> None:
    out = copy(trained, tmp_path)
    before = files(out)
    monkeypatch.chdir(out)
    result = run(trained, Path("."), "--steps", "1", "--overwrite")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mbp: error: --out . is the working directory: name a folder of its own"
    ]
    assert files(out) == before


# --- runs that end before their first step -----------------------------------------------------------


def test_a_run_of_no_steps_leaves_a_folder_a_plain_run_takes(trained, tmp_path: Path) -> None:
    """Before the fix: the second run was refused ('holds a run (metrics of an earlier run)')."""
    out = tmp_path / "D"
    assert run(trained, out, "--steps", "0").returncode == 0
    assert (out / "metrics.jsonl").exists()
    result = run(trained, out, "--steps", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 1


def test_a_run_failing_after_setup_leaves_a_folder_a_plain_run_takes(trained, tmp_path: Path) -> None:
    out = tmp_path / "D"
    failed = run(trained, out, "--steps", "1", "--set", "train.sinks=[{type: tensorboard}]")
    assert failed.returncode == 2 and "sink 'tensorboard' cannot be used" in failed.stderr
    result = run(trained, out, "--steps", "1")
    assert result.returncode == 0, result.stderr


def test_a_write_probe_leaves_another_processs_probe_alone(tmp_path: Path) -> None:
    """Before the fix: every probe was ``.mbp-write-probe``; two runs starting together removed each
    other's, and one failed with 'cannot write there (No such file or directory)'."""
    theirs = tmp_path / ".mbp-write-probe"
    theirs.write_text("theirs")
    check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".mbp-write-probe"] and theirs.read_text() == "theirs"


# --- the lock on --out -------------------------------------------------------------------------------


def test_a_second_holder_is_refused_with_the_live_pid(tmp_path: Path) -> None:
    with holding(tmp_path), pytest.raises(OutputBusyError) as caught:  # noqa: SIM117
        with holding(tmp_path):
            pass
    assert str(caught.value) == (
        f"--out {tmp_path}: process {os.getpid()} is running there (lock {tmp_path / LOCK}): "
        "wait for it to end or choose another --out"
    )
    assert not (tmp_path / LOCK).exists()


def test_the_lock_is_released_on_an_exception(tmp_path: Path, capsys) -> None:
    with pytest.raises(RuntimeError), holding(tmp_path):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK).exists()
    with holding(tmp_path):
        pass
    assert capsys.readouterr().err == ""  # nothing stale to take over


@pytest.mark.parametrize("option", ["--steps", "--resume", "--overwrite"])
def test_run_resume_and_overwrite_beside_a_live_run_are_refused(trained, tmp_path: Path, option) -> None:
    """Before the fix: both runs trained into one folder (steps twice in metrics.jsonl)."""
    out = copy(trained, tmp_path)
    before = {name: (out / name).read_bytes() for name in files(out)}
    with holding(out):
        extra = ("--steps", "4") if option == "--steps" else (option,)
        result = run(trained, out, *extra)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: --out {out}: process {os.getpid()} is running there (lock {out / LOCK}): "
        "wait for it to end or choose another --out"
    ]
    assert {name: (out / name).read_bytes() for name in files(out)} == before


HOLDER = """
import sys, time
from pathlib import Path
from mbp.train.outlock import holding
with holding(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def held_then(out: Path, sig: int) -> int:
    """Start a process holding ``out``'s lock, send it ``sig``, and return its exit code."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'core'}:{ROOT / 'plugins'}"}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    with pytest.raises(MbpError, match=f"process {child.pid} is running there"), holding(out):
        pass
    child.send_signal(sig)
    return child.wait(timeout=30)


def test_sigterm_releases_the_lock(tmp_path: Path, capsys) -> None:
    assert held_then(tmp_path, signal.SIGTERM) == 128 + signal.SIGTERM
    assert not (tmp_path / LOCK).exists()
    with holding(tmp_path):
        pass
    assert capsys.readouterr().err == ""


def test_sigterm_during_a_run_says_terminated_and_blames_no_plugin(trained, tmp_path: Path) -> None:
    """``timeout`` or a scheduler ending a run sends SIGTERM wherever the run is, often inside a codec
    or a backbone: the exit is 143 with one line saying so, never a plugin "calling sys.exit"."""
    _, registry, shard = trained
    out = tmp_path / "T"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'core'}:{ROOT / 'plugins'}"}
    args = ["run", "qa", shard, "--registry", registry, "--out", str(out), "--steps", "100000"]
    child = subprocess.Popen(
        [sys.executable, "-m", "mbp.cli", *args], stderr=subprocess.PIPE, text=True, env=env
    )
    assert child.stderr is not None
    first = child.stderr.readline()
    assert first.startswith("mbp: training qa"), first
    child.send_signal(signal.SIGTERM)
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    assert rest.splitlines()[-1:] == ["mbp: terminated (SIGTERM)"], rest
    assert "plugin" not in rest and "sys.exit" not in rest
    assert not (out / LOCK).exists()


def test_a_killed_holders_lock_is_taken_over_with_a_note(tmp_path: Path, capsys) -> None:
    code = held_then(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    pid = (tmp_path / LOCK).read_text().strip()  # kill -9 leaves the file: nothing ran to remove it
    with holding(tmp_path):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
    assert capsys.readouterr().err.splitlines() == [
        f"mbp: --out {tmp_path}: process {pid} ended without releasing its lock; taking it over"
    ]


def test_a_run_takes_over_a_stale_lock(trained, tmp_path: Path) -> None:
    out = tmp_path / "D"
    out.mkdir()
    (out / LOCK).write_text("999999999\n")  # no process holds it
    result = run(trained, out, "--steps", "1")
    assert result.returncode == 0, result.stderr
    assert (
        f"mbp: --out {out}: process 999999999 ended without releasing its lock; taking it over"
        in result.stderr.splitlines()
    )
    assert not (out / LOCK).exists()


# --- mbp generate --out ------------------------------------------------------------------------------


def test_generate_into_an_unwritable_folder_fails_before_generating(
    components, tmp_path: Path, monkeypatch
) -> None:
    """Before the fix: the bytes were generated, then lost in a generic NotADirectoryError."""
    import mbp.generate

    config = ModelConfig.model_validate({"stages": [stage("transformer", 16, 1)]})
    save_model(tmp_path / "ckpt", build_model(config, components), config)
    calls: list[int] = []
    real = mbp.generate.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mbp.generate, "generate", counted)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ("generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "hi", "--max-bytes", "4")
    result = invoke_mbp(*args, "--out", str(blocker / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: --out {blocker / 'out'}: cannot write there (Not a directory)"
    ]
    assert calls == []
    assert invoke_mbp(*args, "--out", str(tmp_path / "gen")).returncode == 0
    assert calls == [1] and list((tmp_path / "gen").iterdir())
