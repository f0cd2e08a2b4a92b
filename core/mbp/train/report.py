"""Metrics as JSON lines, a PNG plot, progress on stderr (only when it is a terminal), and the run's
summary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mbp.data.skips import SkipLog
    from mbp.resolve import Resolved
    from mbp.train.checkpoint import TrainState


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        """A fresh log, or with ``resume_step`` the rows up to that step: later ones are logged again."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r.get("step", 0) <= resume_step]
        path.write_text("".join(json.dumps(r, default=float) + "\n" for r in self.rows))
        self.handle = open(path, "a")  # noqa: SIM115 - lives as long as the run

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.handle.write(json.dumps(row, default=float) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_bpb"]) for r in rows if "train_bpb" in r]
    evals = [r for r in rows if r.get("kind") == "eval"]
    codecs = sorted({k for r in evals for k in r if k.startswith("bpb_")})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot(*zip(*train, strict=True), label="train (weighted tokens)")
    weighted = [(r["step"], r["loss_bpb"]) for r in evals if r.get("loss_bpb") is not None]
    if weighted:  # the same weighting as the training curve: the pair that shows memorising
        left.plot(*zip(*weighted, strict=True), "s-", label="held-out (weighted tokens)")
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_bpb"] for r in evals], "o-", label="eval, all tokens")
    for key in codecs:
        left.plot(
            [r["step"] for r in evals if key in r],
            [r[key] for r in evals if key in r],
            ".--",
            label=f"eval {key[4:]}",
        )
    left.set(xlabel="step", ylabel="bits per byte", title="bits per byte")
    left.legend(fontsize=8)
    if any("accuracy" in r for r in evals):
        right.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", label="eval accuracy")
        right.axhline(evals[-1].get("majority_baseline", 0), color="gray", ls="--", label="majority baseline")
        right.set_ylim(0, 1)
        right.legend(fontsize=8)
    right.set(xlabel="step", title="task metric (eval)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class Progress:
    """One updating line on stderr: step, loss, bytes/s, ETA. Silent when stderr is not a terminal."""

    def __init__(self, total: int, start_step: int) -> None:
        self.enabled = sys.stderr.isatty()
        self.total = total
        self.start_step = start_step
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        sys.stderr.write(
            f"\rstep {step}/{self.total}  loss {loss:.3f}  {tokens_per_s:,.0f} bytes/s  ETA {eta:,.0f}s   "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def run_summary(
    resolved: Resolved,
    state: TrainState,
    log: SkipLog,
    last_eval: dict[str, Any],
    checkpoint: Path | None,
    out: Path,
    metrics: MetricsLog | None,
) -> dict[str, Any]:
    """What ``mbp run --json`` prints of every run (the trainer adds its plans)."""
    plot_path = None
    if metrics:
        metrics.close()
        plot_path = plot(metrics.rows, out / "metrics.png") if metrics.rows else None
    named = {f"eval_{k}" if k == "bpb" else k: v for k, v in last_eval.items()}
    return {
        "pipeline": resolved.name,
        "steps": state.step,
        "samples_seen": state.samples_seen,
        "samples_skipped": log.samples_skipped,
        "failed_shards": list(log.failed),
        "metrics": named,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "metrics_file": str(out / "metrics.jsonl"),
        "plot": str(plot_path) if plot_path else None,
    }
