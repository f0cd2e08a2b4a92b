"""Issue 13, item 5: the registry's `mamba-transformer` model (a Mamba global stage, 256 wide, 4 layers,
under a Transformer local stage) against the same model with a Transformer global stage, one training
step (forward, backward, optimizer) on its pipeline's batch (4 rows of 8,192 bytes), in fp32 and bf16.
Alternating rounds in one process, each model warmed on its shapes first; bytes/s is the batch's bytes
over the median step time.

Run: python -m benchmarks.bench_mamba_stage [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from mbp.config import TrainConfig
from mbp.model.build import build_model
from mbp.plugins import get_platform
from mbp.train.allocator import keep_freed_memory
from mbp.train.optim import make_optimizer
from mbp.train.precision import choose_precision

from benchmarks.common import save

ROWS, LENGTH = 4, 8192
MAMBA = {"type": "mamba", "state": 64, "headdim": 32}
TRANSFORMER = {"type": "transformer", "heads": 4}


def config(global_backbone: dict[str, Any]) -> dict[str, Any]:
    return {
        "stages": [
            {"backbone": global_backbone, "dim": 256, "layers": 4},
            {"backbone": {"type": "transformer", "heads": 4}, "dim": 128, "layers": 2, "patch": 8},
        ]
    }


class Stepper:
    def __init__(self, global_backbone: dict[str, Any], precision: str) -> None:
        torch.manual_seed(0)
        self.model = build_model(config(global_backbone), get_platform().components).train()
        self.optimizer = make_optimizer(self.model, TrainConfig(lr=1e-3, weight_decay=0.1))
        self.precision = choose_precision(precision, torch.device("cpu"))  # type: ignore[arg-type]
        self.tokens = torch.randint(0, 256, (ROWS, LENGTH))
        self.step()  # shapes warmed: oneDNN makes its bf16 kernels on first use

    def step(self) -> float:
        start = time.perf_counter()
        with self.precision.autocast(torch.device("cpu")):
            loss = self.model.loss(self.tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    cases = {
        f"{name}_{precision}": Stepper(backbone, precision)
        for name, backbone in (("mamba", MAMBA), ("transformer", TRANSFORMER))
        for precision in ("fp32", "bf16")
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, stepper in cases.items():
            seconds[name] += [stepper.step() for _ in range(2)]
    result: dict[str, Any] = {"batch": f"{ROWS} x {LENGTH} bytes", "rounds": args.rounds}
    for name, times in seconds.items():
        median = statistics.median(times)
        result[name] = {"step_s": round(median, 4), "bytes_per_s": round(ROWS * LENGTH / median)}
    for name in ("mamba", "transformer"):
        result[f"{name}_fp32_over_bf16"] = round(
            result[f"{name}_fp32"]["step_s"] / result[f"{name}_bf16"]["step_s"], 3
        )
    for precision in ("fp32", "bf16"):
        mamba, transformer = (
            result[f"mamba_{precision}"]["step_s"],
            result[f"transformer_{precision}"]["step_s"],
        )
        result[f"mamba_over_transformer_time_{precision}"] = round(mamba / transformer, 3)
    save("mamba_stage", result)


if __name__ == "__main__":
    main()
