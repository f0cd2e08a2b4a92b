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
from mbp.model.io import CONFIG, WEIGHTS, load_weights, state_tensors

OPTIMIZER = "optimizer.safetensors"
STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    step: int
    epoch: int
    consumed: int
    samples_seen: int
    samples_skipped: int


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = tensor.detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    pipeline_name: str,
    pipeline: Pipeline,
    keep: int,
) -> Path:
    target = out / "checkpoints" / f"step-{state.step:08d}"

    def fill(tmp: Path) -> None:
        save_file(state_tensors(model), str(tmp / WEIGHTS))
        tensors, groups = _optimizer_tensors(optimizer)
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


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[TrainState, dict[str, Any]]:
    load_weights(model, directory / WEIGHTS)
    try:
        document = json.loads((directory / CONFIG).read_text())
        tensors = load_file(str(directory / OPTIMIZER))
    except (OSError, json.JSONDecodeError, Exception) as error:
        raise CheckpointError(f"{directory}: incomplete or unreadable checkpoint: {error}") from None
    state: dict[str, Any] = {"state": {}, "param_groups": document["optimizer"]["param_groups"]}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state["state"].setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict(state)
    torch.set_rng_state(tensors["rng.torch"])
    return TrainState(**document["train_state"]), document
