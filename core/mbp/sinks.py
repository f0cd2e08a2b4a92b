"""Metrics sinks: where a run's metric rows go besides its own ``metrics.jsonl``.

Plugins register sinks through ``mbp_register_sinks`` (TensorBoard is a built-in one); a third party adds
its own tracker the same way. Each row is a flat dict with ``kind`` ("train" or "eval") and ``step``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mbp.components import ComponentTable
from mbp.config import Ref
from mbp.errors import ConfigError, MbpError


@runtime_checkable
class MetricsSink(Protocol):
    """What the training loop calls on a sink, on the main process only."""

    def write(self, row: dict[str, Any]) -> None:
        """One metric row, as ``metrics.jsonl`` receives it."""

    def close(self) -> None:
        """The run ended (finished, stopped or failed): flush and release what the sink holds."""


class SinkUnavailableError(MbpError):
    """The sink's library is not installed; the message says what to install."""


def open_sinks(
    refs: list[Ref] | None, components: ComponentTable, out: Path, resume_step: int | None
) -> list[MetricsSink]:
    """The sinks a run writes to: those named (each must work), or every registered one that can."""
    named = refs is not None
    chosen = refs if refs is not None else [Ref(type=name) for name in components.names("sinks")]
    sinks: list[MetricsSink] = []
    for ref in chosen:
        try:
            sinks.append(components.build("sinks", ref.as_dict(), out=out, resume_step=resume_step))
        except SinkUnavailableError as error:
            if named:
                raise ConfigError(f"train.sinks: sink '{ref.type}' cannot be used: {error}") from None
    return sinks
