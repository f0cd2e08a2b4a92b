"""Issues 4 and 5: mbp against the public `mblm` package at an identical architecture, side by side in
one run (2 stages, widths [256, 128], stage lengths [128, 64] = 8192 bytes, layers [4, 2], 4 heads per
stage, fp32, CPU). Each measurement runs in its own process; mblm runs in benchmarks/.venv-ref, which
this script creates on first use (it is never a test dependency).

Run: python benchmarks/bench_model.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import save

HERE = Path(__file__).resolve().parent
REF = HERE / ".venv-ref"
REF_PYTHON = REF / "bin" / "python"


def ensure_reference_venv() -> None:
    if REF_PYTHON.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(REF)], check=True)
    pip = [str(REF_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "mblm==0.4.2", "mambapy==1.2.0"], check=True)


def call(python: str, worker: str, *args: object) -> dict:
    done = subprocess.run([python, str(HERE / worker), *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        return {"failed": done.returncode, "stderr": done.stderr[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool) -> None:
    ensure_reference_venv()
    ours, ref = sys.executable, str(REF_PYTHON)
    results: dict[str, object] = {}
    repeats = 3 if quick else 5
    # The machine's speed drifts by tens of percent between minutes: the two sides alternate, and the
    # ratio is taken per round (median over rounds).
    rounds = []
    for _ in range(repeats):
        a = call(ours, "mbp_worker.py", "train_step", 8192, 2, 3)
        b = call(ref, "mblm_worker.py", "train_step", 8192, 2, 3)
        rounds.append({"mbp_s": a["step_s"], "mblm_s": b["step_s"], "ratio": b["step_s"] / a["step_s"]})
    results["train_step_8192x2"] = {
        "rounds": rounds,
        "params": {"mbp": a["params"], "mblm": b["params"]},
        "params_diff": abs(a["params"] - b["params"]) / b["params"],
        "time_ratio_mblm_over_mbp": statistics.median(r["ratio"] for r in rounds),
    }
    memory_len = 131072 if quick else 524288
    a = call(ours, "mbp_worker.py", "peak_memory", memory_len, 1)
    b = call(ref, "mblm_worker.py", "peak_memory", memory_len)
    results[f"peak_memory_{memory_len}"] = {
        "mbp": a,
        "mblm": b,
        "memory_ratio_mbp_over_mblm": a["peak_mb"] / b["peak_mb"],
    }
    rounds = []
    for _ in range(repeats):
        a = call(ours, "mbp_worker.py", "generate", 8000, 512)
        b = call(ref, "mblm_worker.py", "generate", 8000, 16)
        rounds.append(
            {
                "mbp_bytes_per_s": a["bytes_per_s"],
                "mblm_bytes_per_s": b["bytes_per_s"],
                "ratio": a["bytes_per_s"] / b["bytes_per_s"],
            }
        )
    results["generate_512_after_8000"] = {
        "rounds": rounds,
        "speed_ratio_mbp_over_mblm": statistics.median(r["ratio"] for r in rounds),
    }
    short = call(ours, "mbp_worker.py", "decode", 1024, 512)
    long = call(ours, "mbp_worker.py", "decode", 65536, 512)
    results["per_byte_64k_vs_1k"] = {
        "1KiB": short,
        "64KiB": long,
        "ratio": long["decode_s_per_byte"] / short["decode_s_per_byte"],
    }
    one = call(ours, "mbp_worker.py", "generate", 1024, 256, 1)
    many = call(ours, "mbp_worker.py", "generate", 1024, 256, 32)
    results["batched_32_vs_1"] = {
        "1": one,
        "32": many,
        "throughput_ratio": many["bytes_per_s"] / one["bytes_per_s"],
    }
    save("model", results)


if __name__ == "__main__":
    main("--quick" in sys.argv)
