"""``mbp run --init-from DIR``: start training from a checkpoint's weights with a fresh optimizer, schedule
and data position (fine-tuning an imported or an earlier model), as opposed to ``--resume``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mbp.config import ModelConfig
from mbp.errors import CheckpointError, ConfigError
from mbp.model.checkpoint_files import WEIGHTS, load_weights, read_config

IGNORED = {"checkpoint", "loss_chunk"}
"""Model settings that change how a model runs, not its weights: they may differ from the checkpoint's.
So may every dropout rate, whatever a backbone calls it (``dropout``, mblm's ``attn_dropout``...): a
language model fine-tuned under an answer head gets that head's dropout."""


def _ignored(key: str) -> bool:
    return key in IGNORED or key.endswith("dropout")


def first_difference(saved: Any, wanted: Any, path: str = "model") -> str | None:
    """The dotted path of the first weight-relevant setting that differs, with both values."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in [k for k in wanted if not _ignored(k)] + [k for k in saved if k not in wanted]:
            if _ignored(key):
                continue
            found = first_difference(saved.get(key), wanted.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(wanted, list) and len(saved) == len(wanted):
        for index, (a, b) in enumerate(zip(saved, wanted, strict=True)):
            found = first_difference(a, b, f"{path}.{index}")
            if found:
                return found
        return None
    return None if saved == wanted else f"{path}: checkpoint has {saved!r}, the pipeline {wanted!r}"


def init_from(directory: Path, model: nn.Module, wanted: ModelConfig) -> None:
    """Load ``directory``'s weights into ``model`` after checking both describe the same architecture."""
    document = read_config(directory)
    try:
        saved = ModelConfig.model_validate(document["model"]).model_dump()
    except Exception:
        raise CheckpointError(
            f"--init-from {directory}: its config.json has no valid 'model' section"
        ) from None
    difference = first_difference(saved, wanted.model_dump())
    if difference:
        raise ConfigError(
            f"--init-from {directory}: the checkpoint's model differs from the pipeline's: {difference}"
        )
    load_weights(model, Path(directory) / WEIGHTS)
