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
from mbp.session import resolve
from mbp.train.loop import make_optimizer, run

from benchmarks.common import save

STEPS = 60


def main() -> None:
    base = resolve(None, None)
    settings = [
        f"train.steps={STEPS}",
        "train.eval_every=100000",
        "train.checkpoint_every=100000",
        "train.log_every=10",
    ]
    resolved = resolve(None, base.name, apply_overrides(base, settings))
    data, shards = resolved.pipeline.data, expand_shards(resolved.pipeline.data.train_shards)
    with tempfile.TemporaryDirectory() as out:
        run(resolved, Path(out), resume=False, train_shards=shards, eval_shards=[])
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    end_to_end = statistics.median(r["bytes_per_s"] for r in rows if r["kind"] == "train" and r["step"] > 10)

    torch.manual_seed(resolved.pipeline.train.seed)
    model = build_model(resolved.pipeline.model, get_platform().components).train()
    optimizer = make_optimizer(model, 1e-3, 0.1)
    stream = encoded_stream(
        shards,
        resolved.encoder,
        data.seq_len,
        SkipLog(),
        seed=resolved.pipeline.train.seed,
        shuffle_buffer=data.shuffle_buffer,
    )
    made = batches(stream, data.batch_size, data.seq_len, pack=data.pack)
    ready = [batch for (batch, _), _ in zip(made, range(STEPS), strict=False)]
    rates = []
    for index, batch in enumerate(ready):
        start = time.perf_counter()
        model.loss(batch.tokens, batch.weights).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 10:
            rates.append(batch.num_tokens / (time.perf_counter() - start))
    bare = statistics.median(rates)
    save(
        "run",
        {
            "pipeline": resolved.name,
            "batch_rows": data.batch_size,
            "seq_len": data.seq_len,
            "end_to_end_bytes_per_s": round(end_to_end),
            "bare_step_bytes_per_s": round(bare),
            "ratio_end_to_end_over_bare": round(end_to_end / bare, 3),
        },
    )


if __name__ == "__main__":
    main()
