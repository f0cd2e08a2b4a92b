"""Is a change slower? The training step and generation of two checkouts of mbp, side by side in one
run, alternating rounds, each measurement in its own process with that checkout's code.

Measures, per round and checkout (``benchmarks/mbp_worker.py`` of each checkout, the benchmark
architecture: 2 stages, widths [256, 128]): the training step at 2 x 8,192 bytes in fp32 and at the
precision ``auto`` picks here, and bytes/s of 1,024 new bytes after a 1,000-byte prompt. Reports the
medians of each and of the per-round ratios new / old (a step-time ratio under 1 is faster; a
bytes/s ratio over 1 is faster).

Run: python -m benchmarks.bench_ab OLD_CHECKOUT NEW_CHECKOUT [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import save

MEASURES: dict[str, tuple[tuple[str, ...], str]] = {
    "step_fp32_s": (("train_step", "8192", "2", "3", "fp32"), "step_s"),
    "step_auto_s": (("train_step", "8192", "2", "3", "auto"), "step_s"),
    "generate_bytes_per_s": (("generate", "1000", "1024"), "bytes_per_s"),
}


def measure(checkout: Path, args: tuple[str, ...], key: str) -> float:
    env = {**os.environ, "PYTHONPATH": f"{checkout / 'core'}:{checkout / 'plugins'}"}
    worker = checkout / "benchmarks" / "mbp_worker.py"
    done = subprocess.run([sys.executable, str(worker), *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"bench_ab: {worker} {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])[key])


def one_round(old: Path, new: Path, new_first: bool) -> dict[str, dict[str, float]]:
    row: dict[str, dict[str, float]] = {}
    for name, (args, key) in MEASURES.items():
        order = [("new", new), ("old", old)] if new_first else [("old", old), ("new", new)]
        row[name] = {side: measure(checkout, args, key) for side, checkout in order}
        row[name]["ratio"] = row[name]["new"] / row[name]["old"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ab", description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path, help="the checkout to compare against")
    parser.add_argument("new", type=Path, help="the checkout with the change")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = [one_round(args.old, args.new, new_first=bool(r % 2)) for r in range(args.rounds)]
    summary = {
        name: {part: statistics.median(r[name][part] for r in rounds) for part in ("old", "new", "ratio")}
        | {"ratio_range": [min(r[name]["ratio"] for r in rounds), max(r[name]["ratio"] for r in rounds)]}
        for name in MEASURES
    }
    save("bench_ab", {"old": str(args.old), "new": str(args.new), "summary": summary, "rounds": rounds})


if __name__ == "__main__":
    main()
