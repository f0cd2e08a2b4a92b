"""Issue 13: what this machine's hardware gives bf16, and what ``train.precision: auto`` picks here.

Measures matrix-product rates in fp32 and bf16 on the training step's own shapes (the benchmark
architecture's global stage 256 -> 768 and local stage 128 -> 512, 16,384 rows), alternating the two
dtypes in rounds, and reports the policy's choice with its reason. On a CPU without AMX or AVX512-BF16
PyTorch emulates bf16 products, and ``auto`` must not pick it.

Run: python -m benchmarks.bench_precision [--rows N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from mbp.train.precision import FAST_BF16_CPU_FLAGS, choose_precision, cpu_flags

from benchmarks.common import median_seconds, save

SHAPES = [(256, 768), (128, 512), (256, 256)]


def gflops(rows: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, repeats=3)
    return 2 * rows * k * n / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):  # alternate the dtypes so that machine noise hits both alike
        for k, n in SHAPES:
            for dtype in (torch.float32, torch.bfloat16):
                key = f"{args.rows}x{k}x{n}"
                rates.setdefault(key, {}).setdefault(str(dtype).removeprefix("torch."), []).append(
                    gflops(args.rows, k, n, dtype)
                )
    choice = choose_precision("auto", torch.device("cpu"))
    rows = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16_flags_present": sorted(set(FAST_BF16_CPU_FLAGS) & cpu_flags()),
        "threads": torch.get_num_threads(),
        "gflops_median": {
            shape: {dtype: round(statistics.median(v), 2) for dtype, v in by.items()}
            for shape, by in rates.items()
        },
        "bf16_over_fp32": {
            shape: round(statistics.median(by["bfloat16"]) / statistics.median(by["float32"]), 4)
            for shape, by in rates.items()
        },
        "auto_precision": choice.precision,
        "auto_reason": choice.reason,
    }
    save("precision", rows)


if __name__ == "__main__":
    main()
