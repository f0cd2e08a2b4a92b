"""Issue 13 item 5: evaluation bytes/s as a ratio to the training step's, same model, same pipeline.

Pipeline: `real-text-fortunes` of the real-data suite (short English texts, about 170 bytes each, rows of
2,048 bytes), the case the issue measured: before evaluation packed rows, every held-out text had a row of
its own and `mbp eval` ran at 0.3x training. Build the suite first (`python -m benchmarks.realdata.build`).

Each round measures, back to back on one model:
- training: bare steps (forward, backward, clip, AdamW) on batches made as training makes them;
- evaluation in process: reading and encoding the held-out shards, packing them, and `evaluate`;
- `mbp eval` as a user runs it, on a checkpoint of the same model: process start-up included.

Run: python -m benchmarks.bench_eval [--registry FILE] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from mbp.config import settled_batch_size, settled_seq_len
from mbp.data.batches import batches, encoded_stream
from mbp.data.read import expand_shards
from mbp.data.skips import SkipLog
from mbp.model.build import build_model
from mbp.model.checkpoint_files import save_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.planning.probe import Probe
from mbp.planning.rows import plan_rows
from mbp.plugins import get_platform
from mbp.resolve import Resolved, resolve
from mbp.train.evaluate import eval_batches, evaluate
from mbp.train.optim import make_optimizer

from benchmarks.common import save

PIPELINE = "real-text-fortunes"
TRAIN_STEPS = 20
"""Timed training steps a round, after 3 untimed ones."""


def training_rate(resolved: Resolved, model: MultiscaleDecoder) -> float:
    data = resolved.pipeline.data
    shards = expand_shards(data.train_shards)
    split = resolved.split
    log = SkipLog(quiet=True)
    stream = encoded_stream(
        shards,
        resolved.encoder,
        settled_seq_len(data),
        log,
        shuffle_buffer=data.shuffle_buffer,
        augment=True,
        split=split,
    )
    made = batches(
        stream,
        settled_batch_size(data),
        settled_seq_len(data),
        pack=data.pack,
        align=model.patch_len,
        split=split,
    )
    ready = [batch for (batch, _), _ in zip(made, range(TRAIN_STEPS + 3), strict=False)]
    optimizer = make_optimizer(model, resolved.pipeline.train.model_copy(update={"lr": 1e-3}))
    model.train()
    start, trained = 0.0, 0
    for index, batch in enumerate(ready):
        if index == 3:
            start, trained = time.perf_counter(), 0
        model.loss(batch.tokens, batch.weights, batch.begins).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trained += batch.num_tokens
    return trained / (time.perf_counter() - start)


def evaluation_rate(resolved: Resolved, model: MultiscaleDecoder, shards: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    made = eval_batches(resolved, shards, SkipLog(quiet=True), model.patch_len)
    evaluate(model, made, resolved.head)
    tokens = sum(batch.num_tokens for batch in made)
    return tokens / (time.perf_counter() - start), tokens


def command_rate(registry: str, checkpoint: Path, shards: list[str], tokens: int) -> float:
    start = time.perf_counter()
    command = ["mbp", "eval", PIPELINE, *shards, "--checkpoint", str(checkpoint), "--registry", registry]
    subprocess.run(command, check=True, capture_output=True)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="/work/realdata/registry.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.registry).is_file():
        sys.exit(f"bench_eval: no {args.registry}: build the suite (python -m benchmarks.realdata.build)")
    components = get_platform().components
    resolved = resolve(args.registry, PIPELINE, components=components)
    resolved, _ = plan_rows(resolved, Probe(expand_shards(resolved.pipeline.data.train_shards)))
    torch.manual_seed(0)
    model = build_model(resolved.pipeline.model, resolved.components)
    shards = expand_shards(resolved.pipeline.data.eval_shards)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model"
        extra = {"pipeline_name": PIPELINE, "pipeline": resolved.pipeline.model_dump()}
        for _ in range(args.rounds):
            train = training_rate(resolved, model)
            # the weights training just moved, so both evaluations score the model that was timed
            save_model(checkpoint, model, resolved.pipeline.model, extra)
            in_process, tokens = evaluation_rate(resolved, model, shards)
            command = command_rate(args.registry, checkpoint, shards, tokens)
            rounds.append(
                {
                    "train_bytes_per_s": round(train),
                    "eval_bytes_per_s": round(in_process),
                    "mbp_eval_command_bytes_per_s": round(command),
                    "eval_over_train": round(in_process / train, 2),
                    "command_over_train": round(command / train, 2),
                }
            )
            print(rounds[-1], flush=True)
    save(
        "eval",
        {
            "pipeline": PIPELINE,
            "eval_tokens": tokens,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "median_eval_over_train": statistics.median(r["eval_over_train"] for r in rounds),
            "median_command_over_train": statistics.median(r["command_over_train"] for r in rounds),
        },
    )


if __name__ == "__main__":
    main()
