"""Watching a run learn: the best checkpoint by a held-out metric, and warnings a user can act on.

Each warning is one line on stderr, said once per run: a held-out loss that rises while the training
loss falls (memorising), rows that are mostly padding, and samples skipped as too long (with the
``data.seq_len`` that would hold 99% of them). A run that ends while its held-out loss is still falling
says so, with the knob that helps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mbp.config import Pipeline
from mbp.errors import MbpError, stderr_line, warn
from mbp.model.checkpoint_files import CONFIG, save_model

BEST = "best"
Mode = Literal["max", "min"]


class DivergedError(MbpError):
    """Training produced a non-finite loss, gradient norm or saved tensor; nothing from that step on is
    applied or saved, so every checkpoint the run leaves holds finite numbers."""


def diverged(step: int, what: str, checkpoint: Path | None, lr: float) -> DivergedError:
    """The one line that stops a diverged run: the step, what went non-finite, where to go back to."""
    back = (
        f"the last finite checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved before it"
    )
    return DivergedError(
        f"training diverged at step {step} ({what}): {back}; a lower train.lr (now {lr:g}) may help"
    )


def note(line: str) -> None:
    stderr_line(f"mbp: {line}")


class BestKeeper:
    """Keeps ``out/checkpoints/best``: the weights that scored best so far on the selection metric.

    It is a model checkpoint (weights + config, no optimizer), so ``mbp generate`` and ``mbp eval`` take
    it like any other; its config.json records the metric, its value and the step.
    """

    def __init__(self, out: Path, metric: str, mode: Mode) -> None:
        self.path = out / "checkpoints" / BEST
        self.metric, self.mode = metric, mode
        self.value: float | None = None
        self.step: int | None = None
        try:  # a resumed run keeps competing against what the interrupted one kept
            best = json.loads((self.path / CONFIG).read_text())["best"]
            if best["metric"] == metric:
                self.value, self.step = float(best["value"]), int(best["step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def offer(
        self, step: int, metrics: dict[str, Any], model: torch.nn.Module, name: str, pipeline: Pipeline
    ) -> bool:
        value = metrics.get(self.metric)
        if not isinstance(value, int | float) or not self.better(float(value)):
            return False
        self.value, self.step = float(value), step
        best = {"metric": self.metric, "value": self.value, "step": step}
        extra = {"pipeline_name": name, "pipeline": pipeline.model_dump(), "best": best}
        save_model(self.path, model, pipeline.model, extra)
        return True

    def describe(self) -> dict[str, Any] | None:
        if self.value is None:
            return None
        return {"metric": self.metric, "value": self.value, "step": self.step, "checkpoint": str(self.path)}


@dataclass
class LearningWatch:
    """Compares held-out and training loss at each evaluation; warns once when they part ways."""

    best_path: Path
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, held-out loss_bpb, recent training bpb) at each evaluation."""
    warned: bool = False

    def observe(self, step: int, held_out: float | None, train: float | None) -> None:
        if held_out is None or train is None or not math.isfinite(held_out):
            return
        self.history.append((step, held_out, train))
        if self.warned or len(self.history) < 2:
            return
        low_step, low, train_then = min(self.history, key=lambda row: row[1])
        # a real rise, not noise: 5% over the best held-out loss, with training still improving
        if held_out > low * 1.05 and train < train_then * 0.95:
            self.warned = True
            warn(
                f"held-out loss rose from {low:.3f} (step {low_step}) to {held_out:.3f} (step {step}) while "
                f"training loss fell from {train_then:.3f} to {train:.3f}: the model is memorising its "
                f"training data. The best checkpoint is kept in {self.best_path}; more data, a smaller model "
                f"or fewer train.steps would help"
            )

    def at_end(self, best_step: int | None, steps: int, minutes: float | None = None) -> str | None:
        """A line when the run ended while still learning: the last evaluation scored best and its
        held-out loss fell by more than 1% since the one before (on the real-data suite: 1.4-2.4% for
        runs whose accuracy or bpb was still improving, 0.7% and less, or rising, for those that had
        levelled off). ``minutes``: the run's steps were the ceiling of that budget, so the knob to turn
        is ``train.minutes``, not ``train.steps``."""
        if len(self.history) < 2 or best_step is None:
            return None
        (_, before, _), (step, last, _) = self.history[-2], self.history[-1]
        if best_step != step or last >= before * 0.99:
            return None
        return (
            f"still learning when the run ended: held-out loss fell {1 - last / before:.1%} over the last "
            f"evaluation ({before:.3f} to {last:.3f} at step {step}); "
            + (
                f"more train.steps (now {steps}) would likely help"
                if minutes is None
                else f"a longer run would likely help: train.minutes (now {minutes:g}) sets its budget"
            )
        )


@dataclass
class PaddingWatch:
    """Warns once when the first batches are mostly padding: compute spent on nothing."""

    seq_len: int
    pack: bool
    batches: int = 0
    real: int = 0
    total: int = 0
    done: bool = False
    threshold: float = 0.5
    after: int = 20

    def observe(self, real_tokens: int, row_tokens: int) -> None:
        if self.done:
            return
        self.batches += 1
        self.real, self.total = self.real + real_tokens, self.total + row_tokens
        if self.batches < self.after:
            return
        self.done = True
        padding = 1 - self.real / max(self.total, 1)
        if padding <= self.threshold:
            return
        fix = (
            "set data.pack=true so short samples share a row"
            if not self.pack
            else f"a smaller data.seq_len (now {self.seq_len}) wastes less"
        )
        warn(f"training rows are {padding:.0%} padding: {fix}")


def length_advice(lengths: list[int], seq_len: int, patch: int, skipped: int) -> str | None:
    """One line for samples skipped as too long: how many, and the seq_len that holds 99% of samples."""
    if not skipped or not lengths:
        return None
    need = int(np.quantile(np.asarray(lengths), 0.99, method="inverted_cdf"))  # the smallest that holds 99%
    fits = -(-need // patch) * patch  # a multiple of the patch length, as data.seq_len must be
    share = skipped / len(lengths)
    return (
        f"{skipped} samples ({share:.1%}) were longer than data.seq_len {seq_len} and skipped; "
        f"data.seq_len={max(fits, seq_len)} would hold 99% of them"
    )
