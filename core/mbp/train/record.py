"""What a run writes as it trains: its metrics rows, in ``metrics.jsonl`` and every sink, with the
throughput of its training alone, and the best checkpoint its evaluations choose."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from mbp.resolve import Resolved
from mbp.sinks import open_sinks
from mbp.train.report import MetricsLog
from mbp.train.watch import BestKeeper, LearningWatch


class RunRecord:
    """The rows of a run in ``out`` since ``started`` (``perf_counter`` seconds); ``resume_step``: the
    step a resumed run goes on from. Only the main process (``main``) writes rows."""

    def __init__(
        self, resolved: Resolved, out: Path, resume_step: int | None, main: bool, started: float
    ) -> None:
        self.started, self.main = started, main
        self.metrics = MetricsLog(out / "metrics.jsonl", resume_step) if main else None
        sinks = resolved.pipeline.train.sinks
        self.sinks = open_sinks(sinks, resolved.components, out, resume_step) if main else []
        defaults = resolved.defaults
        self.best = BestKeeper(out, defaults.selection_metric, defaults.selection_mode)
        self.learning = LearningWatch(self.best.path)
        self.last_train_bpb: float | None = None
        self.last_eval: dict[str, Any] = {}
        # throughput window: bytes trained since the last log line, over wall time minus eval and saving
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def trained(self, tokens: int) -> None:
        self.window_tokens += tokens

    def log_train(self, step: int, loss: float, lr: float, samples_seen: int) -> None:
        self.last_train_bpb = loss / math.log(2)
        self.write(
            {
                "kind": "train",
                "step": step,
                "loss": loss,
                "train_bpb": self.last_train_bpb,
                "lr": lr,
                "samples_seen": samples_seen,
                "bytes_per_s": self.window_tokens / (time.perf_counter() - self.window_start),
            }
        )
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def evaluated(
        self, step: int, result: dict[str, Any], seconds: float, model: nn.Module, resolved: Resolved
    ) -> None:
        """An evaluation's row; on the main process, its model offered as the best checkpoint."""
        self.last_eval = result
        shown = {k: v for k, v in result.items() if k != "confusion"}
        row = {"kind": "eval", "step": step, "eval_bpb": result.get("bpb"), **shown}
        self.write({**row, "eval_seconds": round(seconds, 3)})
        if self.main:
            self.best.offer(step, result, model, resolved.name, resolved.pipeline)
            self.learning.observe(step, result.get("loss_bpb"), self.last_train_bpb)

    def write(self, row: dict[str, Any]) -> None:
        row["elapsed_s"] = round(time.perf_counter() - self.started, 3)
        if self.metrics:
            self.metrics.write(row)
        for sink in self.sinks:
            sink.write(row)

    def paused(self, work: Callable[[], None]) -> float:
        """Run work that is not training and keep it out of the throughput window; its seconds."""
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        self.window_start += seconds
        return seconds

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
