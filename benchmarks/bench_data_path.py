"""Does the data path keep up? Four measurements of the training stream, each alone:

1. Encoded samples/s of the data path (read, shuffle, decode, encode; first epoch, so every field is
   decoded) with 0, 1 and 2 worker processes (``data.workers``), on a pipeline's own shards: by default
   the bundled demo (``vqa-mixed``), or ``--registry R --pipeline P SHARDS...`` for yours.
2. What a GPU step needs: the pipeline's training step in FLOPs (torch's counter on the forward, x3),
   over an H100's dense bf16 peak at a stated utilisation, as samples/s the data path must give one GPU
   were the step bound by its arithmetic. A model as small as the demo's is bound by kernel launches
   instead (milliseconds a step), so its real need is far lower: the bound is what a model large enough
   to use the GPU approaches.
3. I/O per process at world 1, 2 and 4 (``mbp.data.ranks``): shards opened and bytes read in an epoch,
   against the N-fold reading of every process reading every shard.
4. A shard set of ``--gb`` GB (default 1) read from a local HTTP server (127.0.0.1) and from disk: MB/s
   of raw samples (no decoding), written under /tmp and removed afterwards.

Run: python -m benchmarks.bench_data_path [--gb 1] [--samples 600] [--registry R --pipeline P SHARDS...]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import itertools
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mbp.config import settled_batch_size, settled_seq_len
from mbp.data import read
from mbp.data.batches import Batch, batches
from mbp.data.field_cache import FieldCache
from mbp.data.ranks import deal, epoch_order, shard_weights
from mbp.data.read import expand_shards, read_samples
from mbp.data.skips import SkipLog
from mbp.model.build import build_model
from mbp.plugins import get_platform
from mbp.resolve import Resolved, resolve
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import save

H100_BF16_FLOPS = 989e12
"""An H100 SXM's dense bf16 peak."""
UTILISATION = 0.4
"""The share of the peak a well-fed training step reaches: the projection's assumption."""
BUNDLED_REGISTRY = str(Path(read.__file__).resolve().parents[1] / "registry.yaml")


def resolved_of(registry: str, pipeline: str) -> Resolved:
    resolved = resolve(registry, pipeline, components=get_platform().components)
    data = resolved.pipeline.data
    if data.seq_len is None:  # planned by a run from the samples; a benchmark takes a fixed row
        resolved = resolved.with_settings("data", seq_len=1024)
    return resolved


def samples_per_second(resolved: Resolved, shards: list[str], samples: int, workers: int) -> float:
    """Encoded samples/s of the first ``samples`` of a fresh training stream (nothing kept yet)."""
    resolved.encoder.cache = FieldCache()  # nothing kept from an earlier measurement
    training = resolved.stream(training=True, augment=True)
    stream = training.samples(shards, SkipLog(quiet=True), workers=workers)
    started = time.perf_counter()
    count = sum(1 for _ in itertools.islice(stream, samples))
    seconds = time.perf_counter() - started
    stream.close()
    return count / seconds


def gpu_need(resolved: Resolved, shards: list[str]) -> dict[str, float]:
    """The samples/s one H100 would consume at ``UTILISATION`` of its peak on this pipeline's step."""
    data = resolved.pipeline.data
    split = resolved.split
    stream = resolved.stream(training=False).samples(shards, SkipLog(quiet=True))
    packed = batches(
        stream, settled_batch_size(data), settled_seq_len(data), pack=data.pack, align=8, split=split
    )
    batch: Batch = next(packed)[0]
    stream.close()
    model = build_model(resolved.pipeline.model, resolved.components).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.loss(batch.tokens, batch.weights, batch.begins)
    flops = 3.0 * counter.get_total_flops()
    step = flops / (H100_BF16_FLOPS * UTILISATION)
    return {
        "step_gflop": round(flops / 1e9, 2),
        "samples_per_step": batch.samples_started,
        "h100_step_ms_at_40pct": round(step * 1e3, 4),
        "h100_flop_bound_samples_per_s": round(batch.samples_started / step),
    }


def make_set(folder: Path, gigabytes: float, shards: int = 16) -> list[str]:
    """``shards`` tar shards of ``gigabytes`` in all, samples of 256 KB of random (incompressible) bytes."""
    rng = np.random.default_rng(0)
    per_shard = max(1, round(gigabytes * 1e9 / shards / (256 << 10)))
    paths = []
    for shard in range(shards):
        path = folder / f"set-{shard:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                info = tarfile.TarInfo(f"{shard:03d}{i:05d}.bin")
                info.size = 256 << 10
                tar.addfile(info, io.BytesIO(rng.bytes(info.size)))
        paths.append(str(path))
    return paths


def io_per_rank(shards: list[str]) -> dict[str, Any]:
    """Shards opened and bytes read by each process in epoch 0, counted on the stream's own reads."""
    sizes = {shard: os.stat(shard).st_size for shard in shards}
    total = sum(sizes.values())
    rows: dict[str, Any] = {}
    for world in (1, 2, 4):
        opened: list[str] = []
        plain = read.shard_samples

        def counted(shard: str, log: SkipLog, plain: Any = plain, opened: list[str] = opened) -> Any:
            opened.append(shard)
            return plain(shard, log)

        read.shard_samples = counted
        try:
            per_rank = []
            for rank in range(world):
                opened.clear()
                mine = deal(epoch_order(shards, 0, 0, False), shard_weights(shards), world)[rank]
                for _ in read_samples(mine, SkipLog(quiet=True)):
                    pass
                per_rank.append(
                    {
                        "shards_opened": len(opened),
                        "mb_read": round(sum(sizes[shard] for shard in opened) / 1e6, 1),
                    }
                )
        finally:
            read.shard_samples = plain
        rows[f"world_{world}"] = {
            "per_rank": per_rank,
            "every_rank_reads_all_mb": round(world * total / 1e6, 1),
        }
    return rows


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keeps the output to the results
        pass


@contextmanager
def served(folder: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def mb_per_second(shards: list[str]) -> float:
    log = SkipLog()
    started = time.perf_counter()
    size = sum(sum(len(v) for v in raw.fields.values()) for raw in read_samples(shards, log))
    seconds = time.perf_counter() - started
    if log.samples_skipped or log.shards_failed:
        raise SystemExit(f"the set did not read whole: {log.summary()}")
    return size / 1e6 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the streamed shard set (GB)")
    parser.add_argument("--samples", type=int, default=600, help="samples timed per worker count")
    parser.add_argument("--registry", default=BUNDLED_REGISTRY)
    parser.add_argument("--pipeline", default="vqa-mixed")
    parser.add_argument("shards", nargs="*", help="training shards (default: the pipeline's)")
    args = parser.parse_args()
    resolved = resolved_of(args.registry, args.pipeline)
    shards = expand_shards(args.shards or resolved.pipeline.data.train_shards)
    rows: dict[str, Any] = {
        "machine_cores": len(os.sched_getaffinity(0)),
        "pipeline": args.pipeline,
        "encoded_samples_per_s": {
            f"workers_{n}": round(samples_per_second(resolved, shards, args.samples, n), 1) for n in (0, 1, 2)
        },
        "gpu_step": gpu_need(resolved, shards),
    }
    folder = Path(tempfile.mkdtemp(prefix="mbp-bench-data-", dir="/tmp"))
    try:
        made = make_set(folder, args.gb)
        rows["io_per_rank"] = io_per_rank(made)
        with served(folder) as base:
            urls = [f"{base}/{Path(path).name}" for path in made]
            rows["streamed_set"] = {
                "gb": round(sum(os.stat(p).st_size for p in made) / 1e9, 3),
                "disk_mb_per_s": round(mb_per_second(made), 1),
                "http_mb_per_s": round(mb_per_second(urls), 1),
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    save("data_path", rows)


if __name__ == "__main__":
    main()
