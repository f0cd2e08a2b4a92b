"""Issue 6: end-to-end `mbp run` training throughput (bytes/s, data path included) as a ratio to the
bare model training step on the very same batches, in the same run. Pipeline: the bundled default.

Run: python benchmarks/bench_run.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mbp.data.batches import batches, encoded_stream
from mbp.data.read import expand_shards
from mbp.data.skips import SkipLog
from mbp.model.build import build_model
from mbp.overrides import apply_overrides
from mbp.plugins import get_platform
from mbp.resolve import resolve
from mbp.train.loop import RunRequest, make_optimizer, run
from mbp.train.precision import choose_precision

from benchmarks.common import save

STEPS = 60


def one_round() -> dict[str, float]:
    base = resolve(None, None, components=get_platform().components)
    settings = [
        f"train.steps={STEPS}",
        "train.eval_every=100000",
        "train.checkpoint_every=100000",
        "train.log_every=10",
    ]
    resolved = resolve(None, base.name, apply_overrides(base, settings), components=base.components)
    data, shards = resolved.pipeline.data, expand_shards(resolved.pipeline.data.train_shards)
    with tempfile.TemporaryDirectory() as out:
        summary = run(resolved, RunRequest(Path(out), shards, []))
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    end_to_end = statistics.median(r["bytes_per_s"] for r in rows if r["kind"] == "train" and r["step"] > 10)

    torch.manual_seed(resolved.pipeline.train.seed)
    model = build_model(resolved.pipeline.model, resolved.components).train()
    optimizer = make_optimizer(model, 1e-3, 0.1)
    # the batches training makes: samples varied and context rows thinned (augment), packed samples
    # starting on patch boundaries (align)
    stream = encoded_stream(
        shards,
        resolved.encoder,
        data.row_len,
        SkipLog(),
        seed=resolved.pipeline.train.seed,
        shuffle_buffer=data.shuffle_buffer,
        augment=True,
    )
    made = batches(stream, data.batch_rows, data.row_len, pack=data.pack, align=model.patch_len)
    ready = [batch for (batch, _), _ in zip(made, range(STEPS), strict=False)]
    # the same 10-step windows the trainer logs (bytes over wall time), so both sides average alike
    rates, window_start, window_bytes = [], time.perf_counter(), 0
    precision = choose_precision(summary["precision"], torch.device("cpu"))  # the run's, measured or set
    for index, batch in enumerate(ready, start=1):
        with precision.autocast(torch.device("cpu")):
            loss = model.loss(batch.tokens, batch.weights, batch.begins).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_bytes += batch.num_tokens
        if index % 10 == 0:
            if index > 10:
                rates.append(window_bytes / (time.perf_counter() - window_start))
            window_start, window_bytes = time.perf_counter(), 0
    bare = statistics.median(rates)
    return {
        "precision": precision.precision,
        "end_to_end_bytes_per_s": round(end_to_end),
        "bare_step_bytes_per_s": round(bare),
        "ratio": round(end_to_end / bare, 3),
    }


def main() -> None:
    """Three rounds, each measuring both sides back to back; the ratio is taken per round, then the
    median, because this machine's speed drifts by more than the effect from one minute to the next."""
    rounds = [one_round() for _ in range(3)]
    median = statistics.median(r["ratio"] for r in rounds)
    save(
        "run",
        {"pipeline": "vqa-mixed (bundled)", "rounds": rounds, "median_ratio_end_to_end_over_bare": median},
    )


if __name__ == "__main__":
    main()
