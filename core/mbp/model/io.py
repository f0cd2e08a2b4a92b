"""Saving and loading models: safetensors weights plus a JSON config. Nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
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


def load_model(directory: Path, components: ComponentTable) -> tuple[MultiscaleDecoder, dict[str, Any]]:
    document = read_config(directory)
    try:
        config = ModelConfig.model_validate(document["model"])
    except Exception as error:
        raise CheckpointError(f"{directory}/{CONFIG}: invalid model config: {error}") from None
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
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
