"""What a checkpoint's run settled by measuring, which a resumed run keeps rather than measuring again:
its steps (at the time ceiling), its precision (``auto``), whether its samples varied and how many
held-out samples it evaluated, and which optimizer its saved state belongs to. And what a resume may
not take silently: settings that make it train otherwise than the uninterrupted run, and steps it has
already passed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mbp.config import Pipeline
from mbp.errors import ConfigError
from mbp.train.precision import Precision

EXACT = (
    ("data", "seq_len"),
    ("data", "batch_size"),
    ("data", "pack"),
    ("data", "shuffle_buffer"),
    ("data", "augment"),
    ("train", "seed"),
    ("train", "grad_accum"),
    ("train", "lr"),
    ("train", "min_lr_ratio"),
    ("train", "warmup_steps"),
    ("train", "weight_decay"),
    ("train", "clip"),
    ("train", "precision"),
)
"""The settings a resumed run must keep to train as the uninterrupted one would have: the rows and the
order of its samples, and its updates. ``train.steps`` is not among them: more steps extend a run."""


def _setting(document: dict[str, Any], section: str, key: str) -> Any:
    """``pipeline.<section>.<key>`` as a checkpoint's document recorded it, or None where it did not."""
    return ((document.get("pipeline") or {}).get(section) or {}).get(key)


def recorded_steps(document: dict[str, Any], default: int) -> int:
    """The ``train.steps`` a checkpoint's run trained to (planned or given), else ``default``."""
    steps = _setting(document, "train", "steps")
    return steps if isinstance(steps, int) and steps > 0 else default


def recorded_precision(document: dict[str, Any]) -> Precision | None:
    """The precision a checkpoint's run trained in, where it recorded one (``auto`` is settled at start)."""
    precision = _setting(document, "train", "precision")
    return precision if precision in ("fp32", "bf16") else None


def recorded_augment(document: dict[str, Any]) -> bool:
    """Whether a checkpoint's run varied its training samples (``data.augment``); one that records no
    setting did not, unless its codecs said so themselves."""
    return _setting(document, "data", "augment") is True


def recorded_eval_samples(document: dict[str, Any]) -> int | None:
    """The ``data.max_eval_samples`` a checkpoint's run evaluated (given, or planned to keep its
    evaluations within their share of the run), else None: all of them."""
    samples = _setting(document, "data", "max_eval_samples")
    return samples if isinstance(samples, int) and samples > 0 else None


def recorded_optimizer(document: dict[str, Any]) -> str:
    """The ``train.optimizer`` whose state a checkpoint saved: ``adamw`` where its config records no
    optimizer (such a checkpoint holds AdamW state)."""
    chosen = _setting(document, "train", "optimizer")
    return chosen if chosen in ("muon", "adamw") else "adamw"


def resume_changes(directory: Path, document: dict[str, Any], pipeline: Pipeline, steps: int) -> str | None:
    """The warning a resume from ``directory`` gives where ``pipeline`` changes ``EXACT`` settings the
    checkpoint recorded (old -> new, each named), else None. A resume that could train no step (of
    ``steps``, the run's settled bound) is a ``ConfigError``: ``train.steps`` below the checkpoint's
    step would otherwise end at once, silently."""
    done = int(document["train_state"]["step"])
    if steps < done:
        raise ConfigError(
            f"--resume: {directory.name} is at step {done}, past train.steps {steps}: nothing would train; "
            f"pass --steps above {done} to train on"
        )
    ours = pipeline.model_dump(mode="json")
    changes = [
        f"{section}.{key} {_shown(_setting(document, section, key))} -> {_shown(ours[section][key])}"
        for section, key in EXACT
        if key in ((document.get("pipeline") or {}).get(section) or {})  # recorded before it existed: unknown
        and _setting(document, section, key) != ours[section][key]
    ]
    if not changes:
        return None
    return (
        f"--resume from {directory.name} changes {', '.join(changes)}: training goes on with the new "
        "settings, no longer as the uninterrupted run would have"
    )


def check_patches(directory: Path, document: dict[str, Any], pipeline: Pipeline) -> None:
    """A resumed run places its byte-level patches as its checkpoint's run did. Where the two differ (a
    pipeline that leaves the patch unset, planned another way by another version of mbp), resuming would
    train on with patches the weights never saw: a ``ConfigError`` naming the setting that keeps them."""
    stages = _setting(document, "model", "stages")
    if not isinstance(stages, list) or len(stages) < 2:
        return  # saved without its pipeline, or one stage: no byte-level patch to compare
    theirs = (_setting(document, "model", "boundaries"), stages[-1].get("patch"))
    ours = (pipeline.model.model_dump(mode="json")["boundaries"], pipeline.model.patches[-1])
    if theirs == ours:
        return
    stage = len(stages) - 1
    kept = (
        f"--set model.stages.{stage}.patch={theirs[1]}"
        if theirs[0] is None
        else f"the model.boundaries and patch {theirs[1]} its config.json records"
    )
    raise ConfigError(
        f"--resume: {directory.name} placed its byte-level patches {_patches(*theirs)}, this run would place "
        f"them {_patches(*ours)}: give {kept} to resume it"
    )


def _patches(boundaries: Any, patch: Any) -> str:
    return f"{patch} bytes long" if boundaries is None else f"by rules (longest {patch})"


def _shown(value: Any) -> str:
    return "unset" if value is None else value if isinstance(value, str) else json.dumps(value)
