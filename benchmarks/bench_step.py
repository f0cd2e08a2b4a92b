"""Issue 13: the training step at the hardware's precision, against mblm in fp32 (its default), side by
side in one run, alternating rounds, each measurement in its own process. Benchmark architecture (2
stages, widths [256, 128], stage lengths [128, 64], layers [4, 2], batch 2 x 8,192 bytes).

Reports per round and as medians: mblm fp32 / mbp at its default precision (``auto``), mbp fp32 / mbp
default, and the step as a multiple of its bf16 matrix-product limit: the step's matmul FLOPs (torch's
FlopCounterMode on the forward, x3 for the backward) at this machine's bf16 GEMM rate on the step's
shapes (the median of ``bench_precision``'s three shapes at 16,384 rows, measured here in the same run).

Run: python -m benchmarks.bench_step [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from mbp.model.build import build_model
from mbp.plugins import get_platform
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_model import REF_PYTHON, call, ensure_reference_venv
from benchmarks.bench_precision import SHAPES, gflops
from benchmarks.common import save

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import their neighbours plainly
from mbp_worker import config

LENGTH, BATCH, REPEATS = 8192, 2, 5


def step_matmul_flops() -> float:
    model = build_model(config(LENGTH), get_platform().components)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.loss(torch.randint(0, 256, (BATCH, LENGTH)))
    return 3.0 * counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ensure_reference_venv()
    rounds = []
    for _ in range(args.rounds):
        default = call(sys.executable, "mbp_worker.py", "train_step", LENGTH, BATCH, REPEATS, "auto")
        fp32 = call(sys.executable, "mbp_worker.py", "train_step", LENGTH, BATCH, REPEATS, "fp32")
        mblm = call(str(REF_PYTHON), "mblm_worker.py", "train_step", LENGTH, BATCH, REPEATS)
        rounds.append(
            {
                "mbp_default_s": default["step_s"],
                "mbp_default_precision": default["precision"],
                "mbp_fp32_s": fp32["step_s"],
                "mblm_fp32_s": mblm["step_s"],
                "mblm_over_mbp_default": mblm["step_s"] / default["step_s"],
                "mbp_fp32_over_mbp_default": fp32["step_s"] / default["step_s"],
            }
        )
    torch.set_num_threads(torch.get_num_threads())
    rate = statistics.median(gflops(16384, k, n, torch.bfloat16) for k, n in SHAPES) * 1e9
    flops = step_matmul_flops()
    limit = flops / rate
    default_s = statistics.median(r["mbp_default_s"] for r in rounds)
    save(
        "step",
        {
            "rounds": rounds,
            "median_mblm_over_mbp_default": statistics.median(r["mblm_over_mbp_default"] for r in rounds),
            "median_mbp_fp32_over_mbp_default": statistics.median(
                r["mbp_fp32_over_mbp_default"] for r in rounds
            ),
            "step_matmul_gflop": flops / 1e9,
            "bf16_gemm_gflops": rate / 1e9,
            "bf16_matmul_limit_s": limit,
            "mbp_default_s_median": default_s,
            "step_over_limit": default_s / limit,
        },
    )


if __name__ == "__main__":
    main()
