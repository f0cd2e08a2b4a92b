"""Metric rows as TensorBoard scalars, under ``<out>/tensorboard`` (``tensorboard --logdir <out>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbp.api import SinkUnavailableError
from pydantic import BaseModel, ConfigDict


class TensorBoardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subdir: str = "tensorboard"


class TensorBoardSink:
    def __init__(self, params: TensorBoardParams, *, out: Path, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch ships the writer, the tensorboard package the event format
            missing = "package tensorboard is not installed (pip install tensorboard)"
            raise SinkUnavailableError(missing) from None
        # a resumed run continues the same event stream: TensorBoard shows the later of duplicate steps
        self.writer = SummaryWriter(log_dir=str(out / params.subdir), purge_step=resume_step)

    def write(self, row: dict[str, Any]) -> None:
        kind, step = row.get("kind", "train"), int(row.get("step", 0))
        for key, value in row.items():
            if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()
