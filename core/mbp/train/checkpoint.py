"""Training checkpoints: weights, optimizer state and RNG as safetensors; step, schedule, data position
and config as JSON. Each checkpoint is a directory written atomically; the last K are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mbp.atomic import write_dir_atomically
from mbp.config import Pipeline
from mbp.errors import CheckpointError
from mbp.model.checkpoint_files import CONFIG, WEIGHTS, checkpoint_document, load_weights

OPTIMIZER = "optimizer.safetensors"
STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    step: int
    epoch: int
    consumed: int
    samples_seen: int
    samples_skipped: int
    taken: int = 0
    """Tokens of the next sample already trained: a sample cut across rows (``Position.taken``)."""
    ranks: list[list[int]] | None = None
    """Under several processes, each one's (epoch, consumed, taken), by rank (``mbp.data.ranks``)."""


def _optimizer_tensors(optim_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    for index, entry in optim_state["state"].items():
        for key, value in entry.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = tensor.detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, {"param_groups": optim_state["param_groups"]}


def first_nonfinite(model_state: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> str | None:
    """The first weight or optimizer tensor holding an infinity or NaN (named), else None: checked before
    a save, since a step whose loss and gradients were finite can still overflow its update."""
    named = [(f"weight {k}", v) for k, v in model_state.items()]
    named += [
        (f"optimizer state {index}.{key}", value)
        for index, entry in optim_state.get("state", {}).items()
        for key, value in entry.items()
    ]
    for name, tensor in named:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.isfinite().all():
            return name
    return None


def save_checkpoint(
    out: Path,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    state: TrainState,
    pipeline_name: str,
    pipeline: Pipeline,
    keep: int,
) -> Path:
    """Write ``out/checkpoints/step-N`` atomically and keep the last ``keep``. The states are full
    (unsharded) state dicts; the optimizer's is keyed by parameter index, as torch's own."""
    target = out / "checkpoints" / f"step-{state.step:08d}"

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / WEIGHTS))
        tensors, groups = _optimizer_tensors(optim_state)
        save_file(tensors, str(tmp / OPTIMIZER))
        document = {
            "model": pipeline.model.model_dump(),
            "pipeline_name": pipeline_name,
            "pipeline": pipeline.model_dump(),
            "train_state": state.__dict__,
            "optimizer": groups,
        }
        (tmp / CONFIG).write_text(json.dumps(document, indent=2))

    write_dir_atomically(target, fill)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def load_checkpoint(directory: Path, model: torch.nn.Module) -> tuple[TrainState, dict[str, Any]]:
    """Load weights into ``model``; return the train state and the optimizer state (index-keyed) to give
    the optimizer once it exists. Restores torch's RNG."""
    load_weights(model, directory / WEIGHTS)
    document = checkpoint_document(directory, training=True)
    try:
        tensors = load_file(str(directory / OPTIMIZER))
    except Exception as error:
        raise CheckpointError(f"{directory}: incomplete or unreadable checkpoint: {error}") from None
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{directory}/{OPTIMIZER}: tensor rng.torch missing")
    optim_state: dict[str, Any] = {"state": {}, "param_groups": document["optimizer"]["param_groups"]}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            optim_state["state"].setdefault(int(index), {})[key] = tensor
    torch.set_rng_state(tensors["rng.torch"])
    return TrainState(**document["train_state"]), optim_state
