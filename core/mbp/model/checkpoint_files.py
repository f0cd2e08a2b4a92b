"""Saving and loading models: safetensors weights plus a JSON config. Nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from mbp.atomic import write_dir_atomically
from mbp.components import ComponentTable
from mbp.config import ModelConfig
from mbp.errors import CheckpointError
from mbp.model.build import build_model
from mbp.model.decoder import MultiscaleDecoder

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_model(
    directory: Path, model: torch.nn.Module, config: ModelConfig, extra: dict[str, Any] | None = None
) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``, atomically."""

    def fill(tmp: Path) -> None:
        save_file(state_tensors(model), str(tmp / WEIGHTS))
        document = {"model": config.model_dump(), **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(document, indent=2))

    write_dir_atomically(Path(directory), fill)


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a checkpoint ({CONFIG} missing)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint config: {error}") from None


class _TrainStateDoc(BaseModel):
    model_config = ConfigDict(strict=True)
    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    consumed: int = Field(ge=0)
    samples_seen: int = Field(ge=0)
    samples_skipped: int = Field(ge=0)
    taken: int = Field(default=0, ge=0)
    ranks: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=3, max_length=3)]] | None = None
    """Each process's (epoch, consumed, taken) in a run of several (``mbp.data.ranks``)."""


class _OptimizerDoc(BaseModel):
    param_groups: list[dict[str, Any]]


class _CheckpointDoc(BaseModel):
    """The keys of ``config.json`` that mbp reads; a checkpoint from ``mbp run`` has all of them."""

    model: ModelConfig
    pipeline_name: str | None = None
    pipeline: dict[str, Any] | None = None
    """Kept as a mapping: pipelines gain settings over time, and an older checkpoint must still load."""
    train_state: _TrainStateDoc | None = None
    optimizer: _OptimizerDoc | None = None


def checkpoint_document(directory: Path, *, training: bool = False) -> dict[str, Any]:
    """``config.json`` checked key by key: a missing or wrong-typed key is one line naming it.
    ``training``: the keys a resumed run needs (train state, optimizer) are required too."""
    document = read_config(directory)
    if not isinstance(document, dict):
        raise CheckpointError(f"{directory}/{CONFIG}: expected a JSON object")
    try:
        parsed = _CheckpointDoc.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
        raise CheckpointError(f"{directory}/{CONFIG}: key {key}: {first['msg']}{more}") from None
    if training:
        for key in ("pipeline_name", "pipeline", "train_state", "optimizer"):
            if getattr(parsed, key) is None:
                raise CheckpointError(f"{directory}/{CONFIG}: key {key}: missing (not a training checkpoint)")
    return document


def describe_model(model: dict[str, Any]) -> str:
    """Model shapes in a few words: ``transformer dim 32 x2 / transformer dim 16 x1 patch 4``."""
    stages = []
    for index, stage in enumerate(model.get("stages") or []):
        backbone = (stage.get("backbone") or {}).get("type", "?")
        # a later stage's patch (older checkpoints call it seq_len; stage 1's seq_len is no patch)
        size = stage.get("patch") or (stage.get("seq_len") if index else None)
        patch = f" patch {size}" if size else ""
        stages.append(f"{backbone} dim {stage.get('dim')} x{stage.get('layers')}{patch}")
    return " / ".join(stages) or "without stages"


def load_model(directory: Path, components: ComponentTable) -> tuple[MultiscaleDecoder, dict[str, Any]]:
    document = checkpoint_document(directory)
    config = ModelConfig.model_validate(document["model"])
    model = build_model(config, components)
    load_weights(model, Path(directory) / WEIGHTS)
    return model, document


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file missing") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from None
    own = model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in tensors.items() if k in own]
    wrong = [f"{k} {list(theirs)} vs {list(ours)}" for k, theirs, ours in shapes if theirs != ours]
    if wrong:
        raise CheckpointError(
            f"{path}: weights do not match the model's shapes ({len(wrong)} tensors, e.g. {wrong[0]})"
        )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
