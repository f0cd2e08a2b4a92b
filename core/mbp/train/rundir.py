"""The run directory ``--out``: never reused silently, and the checkpoint a ``--resume`` continues from.

A second run into a folder that holds a run would interleave two runs' checkpoints (rotation keeps the
old run's higher steps) and replace its metrics, so that is an error unless ``--resume`` or
``--overwrite`` says what is meant. ``--overwrite`` removes files by the names a run gives them, and
nothing else: the folder may hold the user's own files, in ``checkpoints`` too. A resumed checkpoint
must belong to the pipeline (same fields, same model shapes) and be intact; a damaged newest one is
named, with the newest intact one offered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from mbp.config import Pipeline
from mbp.errors import CheckpointError, ConfigError, stderr_line, warn
from mbp.model.checkpoint_files import CONFIG, WEIGHTS, checkpoint_document, describe_model
from mbp.outdir import remove_owned
from mbp.train.checkpoint import OPTIMIZER, STEP_DIR, list_checkpoints


@dataclass(frozen=True)
class RunRequest:
    """Where a run writes and what it reads, beyond what its pipeline says."""

    out: Path
    train_shards: list[str]
    eval_shards: list[str]
    resume: bool = False
    init_from: Path | None = None
    """A checkpoint whose weights the model starts from (ignored when resuming)."""
    overwrite: bool = False
    """Replace a run already in ``out``."""
    take_intact: bool = False
    """Resume from the newest intact checkpoint when the newest is damaged."""


RUN_FILES = ("metrics.jsonl", "metrics.png")
CHECKPOINT_FILES = (WEIGHTS, OPTIMIZER, CONFIG)
"""Every file mbp writes into a checkpoint folder: all that ``--overwrite`` removes from one."""
OWN_FOLDER = re.compile(r"^(?:damaged-)?step-\d{8}$|^best$")
LEFTOVER = re.compile(r"^\.(?:step-\d{8}|best)\..+$")
"""Temporary folders of a checkpoint write (``write_dir_atomically``) that a kill left behind."""


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds what a run leaves: a checkpoint (finished or not) or metrics of a step.
    A run that ended before its first step (an error, ``--steps 0``) leaves no such thing."""
    folder = out / "checkpoints"
    if folder.is_dir() and any(
        _own_folder(p, OWN_FOLDER) or _own_folder(p, LEFTOVER) for p in folder.iterdir()
    ):
        return True
    try:
        with open(out / "metrics.jsonl") as handle:
            return any(_stepped(line) for line in handle)
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True  # unreadable: not known to be empty


def _own_folder(path: Path, pattern: re.Pattern[str]) -> bool:
    """A folder mbp made: its name is one mbp gives, and it is no link (mbp makes none)."""
    return bool(pattern.match(path.name)) and path.is_dir() and not path.is_symlink()


def _stepped(line: str) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return bool(line.strip())
    return not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] > 0


def prepare_out(out: Path, *, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse to reuse a run folder unless told how; with ``overwrite`` remove what a run wrote there
    (only that: other files in ``out`` are the user's). ``main``: this process may change files."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pass one")
    if resume or not holds_run(out):
        return
    if not overwrite:
        steps = [int(STEP_DIR.match(p.name).group(1)) for p in list_checkpoints(out)]  # type: ignore[union-attr]
        held = f"checkpoints up to step {max(steps)}" if steps else "metrics of an earlier run"
        raise ConfigError(
            f"--out {out} holds a run ({held}): pass --resume to continue it or --overwrite to replace it"
        )
    if main:
        remove_run(out)


def remove_run(out: Path) -> None:
    """Remove the files a run wrote in ``out``, by their names; anything else stays, with a note."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    folder, kept = out / "checkpoints", []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if _own_folder(path, OWN_FOLDER) or _own_folder(path, LEFTOVER):
                kept += [f"{path.name}/{name}" for name in remove_owned(path, CHECKPOINT_FILES)]
            else:
                kept.append(path.name)
        if not kept:
            folder.rmdir()
    if kept:
        shown = ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        note = f"mbp: --overwrite kept {len(kept)} item(s) in {folder} that a run does not write: {shown}"
        stderr_line(note)


def remove_leftovers(out: Path) -> list[str]:
    """Remove temporary checkpoint folders that a killed write left behind (``.step-N.xxxx``); they are
    never read, and a long series of kills would otherwise fill the disk. Only mbp's files go."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _own_folder(path, LEFTOVER) and not remove_owned(path, CHECKPOINT_FILES):
            removed.append(path.name)
    if removed:
        stderr_line(f"mbp: removed {len(removed)} unfinished checkpoint folder(s) in {folder}")
    return removed


def damage_of(directory: Path) -> str | None:
    """Why the checkpoint ``directory`` cannot be resumed from, or None if it is intact.

    The JSON must parse and hold every key, and both safetensors files must have a valid header whose
    tensors fit in the file; tensor values carry no checksum, so bit flips inside them go unseen.
    """
    try:
        checkpoint_document(directory, training=True)
    except CheckpointError as error:
        return str(error).removeprefix(f"{directory}/")
    for name in (WEIGHTS, OPTIMIZER):
        try:
            with safe_open(str(directory / name), framework="pt") as handle:
                handle.keys()
        except FileNotFoundError:
            return f"{name} missing"
        except Exception as error:  # safetensors raises its own types for a damaged file
            return f"{name} unreadable ({' '.join(str(error).split())})"
    return None


def resume_point(out: Path, *, take_intact: bool, main: bool = True) -> Path:
    """The checkpoint to resume from: the newest, or with ``take_intact`` the newest intact one. The
    damaged ones after it are renamed ``damaged-step-N`` (kept for a look, never resumed or rotated)."""
    existing = list_checkpoints(out)
    if not existing:
        raise CheckpointError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    newest = existing[-1]
    problem = damage_of(newest)
    if problem is None:
        return newest
    intact = next((p for p in reversed(existing[:-1]) if damage_of(p) is None), None)
    if intact is None:
        raise CheckpointError(f"--resume: {newest} is damaged ({problem}) and no older checkpoint is intact")
    if not take_intact:
        raise CheckpointError(
            f"--resume: {newest} is damaged ({problem}); the newest intact checkpoint is {intact.name}: "
            "pass --resume-intact to continue from it"
        )
    warn(f"{newest} is damaged ({problem}); resuming from {intact.name}")
    for later in existing[existing.index(intact) + 1 :]:
        if main:
            later.rename(later.with_name(f"damaged-{later.name}"))
    return intact


def check_belongs(
    directory: Path, name: str, pipeline: Pipeline, document: dict[str, Any], model: nn.Module | None = None
) -> None:
    """A checkpoint serves a pipeline only if it reads the same fields with the same codecs and, given
    the pipeline's ``model``, has its weight shapes; the pipeline's name may differ (a renamed copy)."""
    theirs_name = str(document.get("pipeline_name", "?"))
    theirs = document.get("pipeline")
    ours = json.loads(pipeline.model_dump_json())
    # a model saved without its pipeline (not by `mbp run`) cannot be checked field by field
    if isinstance(theirs, dict) and theirs.get("fields") != ours["fields"]:
        their_fields, our_fields = _fields(theirs.get("fields")), _fields(ours["fields"])
        raise ConfigError(
            f"{directory}: checkpoint of pipeline '{theirs_name}' (fields {their_fields}) "
            f"does not fit pipeline '{name}' (fields {our_fields})"
        )
    if model is None:
        return
    try:
        with safe_open(str(directory / WEIGHTS), framework="pt") as handle:
            shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception:
        return  # an unreadable file is reported by the damage check and the loader
    own = {key: list(value.shape) for key, value in model.state_dict().items()}
    if shapes != own:
        theirs_model, ours_model = describe_model(document.get("model") or {}), describe_model(ours["model"])
        raise ConfigError(
            f"{directory}: checkpoint of pipeline '{theirs_name}' has model {theirs_model}; "
            f"pipeline '{name}' has {ours_model}"
        )


def _fields(fields: Any) -> str:
    if not isinstance(fields, dict) or not fields:
        return "unknown"
    return ", ".join(f"{k}: {(v or {}).get('type', '?')}" for k, v in fields.items())


__all__ = [
    "check_belongs",
    "damage_of",
    "holds_run",
    "prepare_out",
    "remove_leftovers",
    "remove_run",
    "resume_point",
]
