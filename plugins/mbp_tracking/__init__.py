"""Built-in plugin: the ``tensorboard`` metrics sink (used when the ``tensorboard`` package is installed)."""

from __future__ import annotations

from mbp.api import MetricsSink, Register, hookimpl

from mbp_tracking.tensorboard import TensorBoardParams, TensorBoardSink


@hookimpl
def mbp_register_sinks(register: Register[MetricsSink]) -> None:
    register("tensorboard", TensorBoardSink, TensorBoardParams)
