"""Issue 13 item 7: does ``torch.compile`` pay off for mbp's training step at this machine's precision?

Builds the benchmark architecture (bench_model.py's: widths [256, 128], stage lengths [128, 64], layers
[4, 2], fp32 on a CPU without fast bf16), times a full training step (loss, backward, AdamW) eagerly and
with the loss compiled, in alternating rounds, and reports the cold compile time separately (the first
compiled step, minus an eager step).

Run: python -m benchmarks.bench_compile [--length N] [--batch N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from mbp.model.build import build_model
from mbp.plugins import get_platform

from benchmarks.common import median_seconds, save


def architecture(length: int) -> dict:
    def stage(dim: int, layers: int, seq_len: int) -> dict:
        backbone = {"type": "transformer", "heads": 4, "mlp": "gelu", "mlp_ratio": 2.0}
        return {"backbone": backbone, "dim": dim, "layers": layers, "seq_len": seq_len}

    return {"stages": [stage(256, 4, length // 64), stage(128, 2, 64)]}


def training_step(compiled: bool, length: int, batch: int) -> tuple[Callable[[], None], float]:
    """A step closure on a fresh model of seed 0, and the seconds its first call took."""
    torch.manual_seed(0)
    model = build_model(architecture(length), get_platform().components)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (batch, length))
    loss = torch.compile(model.loss) if compiled else model.loss

    def step() -> None:
        loss(ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    started = time.perf_counter()
    step()
    return step, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    eager, eager_first = training_step(False, args.length, args.batch)
    compiled, compiled_first = training_step(True, args.length, args.batch)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):  # alternate so that machine noise hits both alike
        times["eager"].append(median_seconds(eager, repeats=3, warmup=0))
        times["compiled"].append(median_seconds(compiled, repeats=3, warmup=0))
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    save(
        "compile",
        {
            "architecture": "widths [256, 128], stage lengths [128, 64], layers [4, 2], fp32",
            "batch": args.batch,
            "length": args.length,
            "threads": torch.get_num_threads(),
            "step_s_rounds": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
            "eager_step_s": round(eager_s, 4),
            "compiled_step_s": round(compiled_s, 4),
            "eager_over_compiled": round(eager_s / compiled_s, 3),
            "cold_compile_s": round(compiled_first - eager_first, 1),
        },
    )


if __name__ == "__main__":
    main()
