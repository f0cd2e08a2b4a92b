"""Issue 4: the longest context mbp trains one step on, on this machine (one process per length; peak
RSS from the kernel). 3 stages (Mamba / Transformer / Transformer), small widths, every stage
checkpointed, loss in chunks so full logits never materialize.

Each length runs at fp32 and at the machine's default precision (``auto``: bf16 with AMX or
AVX512-BF16), in that order, each in its own process.

Run: python -m benchmarks.bench_long_context [BYTES ...]   (default 5242880 = 5 MiB)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from benchmarks.common import save

CONFIG = {
    "stages": [
        {
            "backbone": {"type": "mamba", "state": 32, "headdim": 32, "chunk": 64},
            "dim": 128,
            "layers": 2,
            "checkpoint": True,
        },
        {
            "backbone": {"type": "transformer", "heads": 2},
            "dim": 64,
            "layers": 1,
            "seq_len": 16,
            "checkpoint": True,
        },
        {
            "backbone": {"type": "transformer", "heads": 2},
            "dim": 32,
            "layers": 1,
            "seq_len": 8,
            "checkpoint": True,
        },
    ],
    "loss_chunk": 1 << 16,
}


def one_step(length: int, precision: str) -> dict:
    import torch
    from mbp.model.build import build_model
    from mbp.plugins import get_platform
    from mbp.train.precision import choose_precision

    torch.manual_seed(0)
    model = build_model(CONFIG, get_platform().components).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, 256, (1, length))
    choice = choose_precision(precision, torch.device("cpu"))  # type: ignore[arg-type]
    start = time.perf_counter()
    with choice.autocast(torch.device("cpu")):
        loss = model.loss(ids).loss
    loss.backward()
    optimizer.step()
    return {
        "bytes": length,
        "precision": choice.precision,
        "loss": float(loss),
        "step_s": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(lengths: list[int]) -> None:
    rows = []
    for length in lengths:
        for precision in ("fp32", "auto"):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_long_context", "--one", str(length), precision],
                capture_output=True,
                text=True,
            )
            rows.append(
                json.loads(done.stdout)
                if done.returncode == 0
                else {"bytes": length, "failed": done.returncode, "stderr": done.stderr[-300:]}
            )
            print(json.dumps(rows[-1]), flush=True)
    save("long_context", {"machine": "2 cores, 24 GiB, CPU", "config": CONFIG, "runs": rows})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one_step(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "auto")))
    else:
        main([int(a) for a in sys.argv[1:]] or [5_242_880])
