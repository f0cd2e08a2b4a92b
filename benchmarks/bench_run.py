"""Issue 6 / 13: end-to-end `mbp run` training throughput (bytes/s, data path included) as a ratio to
the bare model training step on the very same batches. Pipeline: the bundled default, all of its steps:
its 3,000 samples are read four times, and from the second epoch on they come from memory, encoded
(``ShardCache``, ``FieldCache``), so the first epoch (about 190 steps) and the rest are reported apart.

Each round is a fresh process that runs both sides, and the rounds alternate which side goes first:
whichever ran second in one process was 4 ms a step (7%) faster, its kernels and memory already warm
(bare second: 54.9 against 60.5 ms; bare first: 58.7 against 59.5). Both sides train at the precision
``auto`` offers on this machine (bf16 where the CPU has AMX or AVX512-BF16), set, not measured per run.

Run: python -m benchmarks.bench_run [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mbp.config import TrainConfig, settled_batch_size, settled_seq_len
from mbp.data.batches import Batch, batches, encoded_stream
from mbp.data.read import expand_shards, read_samples
from mbp.data.skips import SkipLog
from mbp.model.build import build_model
from mbp.overrides import apply_overrides
from mbp.plugins import get_platform
from mbp.resolve import Resolved, resolve
from mbp.train.allocator import keep_freed_memory
from mbp.train.loop import run
from mbp.train.optim import make_optimizer
from mbp.train.precision import choose_precision
from mbp.train.rundir import RunRequest

from benchmarks.common import save

WINDOW = 10
"""Steps a bytes/s reading spans, as the trainer logs them (``train.log_every``)."""


def pipeline() -> Resolved:
    base = resolve(None, None, components=get_platform().components)
    offered = choose_precision("auto", torch.device("cpu")).precision
    settings = [
        "train.eval_every=100000",
        "train.checkpoint_every=100000",
        f"train.log_every={WINDOW}",
        f"train.precision={offered}",
    ]
    return resolve(None, base.name, apply_overrides(base, settings), components=base.components)


def end_to_end(resolved: Resolved) -> tuple[dict[int, float], dict[int, int]]:
    """bytes/s of each logged window of a whole ``mbp run``, and the samples seen by its end."""
    shards = expand_shards(resolved.pipeline.data.train_shards)
    with tempfile.TemporaryDirectory() as out:
        run(resolved, RunRequest(Path(out), shards, []))
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if row["kind"] == "train" and row["step"] > WINDOW]
    return {r["step"]: r["bytes_per_s"] for r in trained}, {r["step"]: r["samples_seen"] for r in trained}


def training_batches(resolved: Resolved) -> list[Batch]:
    """The batches the run trains on: samples varied and context rows thinned (augment), packed
    samples starting on patch boundaries (align)."""
    data, train = resolved.pipeline.data, resolved.pipeline.train
    stream = encoded_stream(
        expand_shards(data.train_shards),
        resolved.encoder,
        settled_seq_len(data),
        SkipLog(),
        seed=train.seed,
        shuffle_buffer=data.shuffle_buffer,
        augment=True,
    )
    made = batches(
        stream,
        settled_batch_size(data),
        settled_seq_len(data),
        pack=data.pack,
        align=resolved.pipeline.model.patch_len,
    )
    return [batch for (batch, _), _ in zip(made, range(train.steps or 0), strict=False)]


def bare(resolved: Resolved, ready: list[Batch]) -> dict[int, float]:
    """bytes/s of the model's training step alone over the same windows."""
    torch.manual_seed(resolved.pipeline.train.seed)
    model = build_model(resolved.pipeline.model, resolved.components).train()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    precision = choose_precision(resolved.pipeline.train.precision, torch.device("cpu"))
    rates, window_start, window_bytes = {}, time.perf_counter(), 0
    for index, batch in enumerate(ready, start=1):
        with precision.autocast(torch.device("cpu")):
            loss = model.loss(batch.tokens, batch.weights, batch.begins).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_bytes += batch.num_tokens
        if index % WINDOW == 0:
            if index > WINDOW:
                rates[index] = window_bytes / (time.perf_counter() - window_start)
            window_start, window_bytes = time.perf_counter(), 0
    return rates


def one_round(bare_first: bool) -> dict[str, float | str | bool]:
    keep_freed_memory()  # what the trainer does first; the bare side must not page-fault more
    resolved = pipeline()
    ready = training_batches(pipeline())  # a resolved pipeline of its own: its caches start empty too
    if bare_first:
        rates = bare(resolved, ready)
        ran, seen = end_to_end(resolved)
    else:
        ran, seen = end_to_end(resolved)
        rates = bare(resolved, ready)
    epoch = sum(
        1 for _ in read_samples(expand_shards(resolved.pipeline.data.train_shards), SkipLog(quiet=True))
    )
    first_epoch = max(step for step, samples in seen.items() if samples <= epoch)
    steps = resolved.pipeline.train.steps or 0
    result: dict[str, float | str | bool] = {
        "precision": resolved.pipeline.train.precision,
        "bare_first": bare_first,
        "first_epoch_steps": first_epoch,
    }
    parts = (
        ("first_epoch", range(2 * WINDOW, first_epoch + 1)),
        ("later_epochs", range(first_epoch + WINDOW, steps + 1)),
    )
    for part, windows in (*parts, ("all", range(2 * WINDOW, steps + 1))):
        both = [step for step in windows if step in rates and step in ran]
        e2e = statistics.median(ran[step] for step in both)
        alone = statistics.median(rates[step] for step in both)
        result |= {
            f"{part}_end_to_end_bytes_per_s": round(e2e),
            f"{part}_bare_step_bytes_per_s": round(alone),
        }
        result[f"{part}_ratio"] = round(e2e / alone, 3)
    return result


def main() -> None:
    """Rounds in fresh processes, alternating which side goes first; the ratio is taken per round, then
    the median, because this machine's speed drifts by more than the effect from one minute to the next."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--one", choices=["bare-first", "run-first"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_round(args.one == "bare-first")))
        return
    rounds = []
    for index in range(args.rounds):
        order = "bare-first" if index % 2 else "run-first"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_run", "--one", order],
            capture_output=True,
            text=True,
            check=True,
        )
        rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rounds[-1], flush=True)
    summary: dict[str, object] = {"pipeline": "vqa-mixed (bundled), all its steps", "rounds": rounds}
    for key in ("all_ratio", "first_epoch_ratio", "later_epochs_ratio"):
        summary[f"median_{key}"] = statistics.median(float(r[key]) for r in rounds)
    save("run", summary)


if __name__ == "__main__":
    main()
