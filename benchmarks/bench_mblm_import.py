"""Issue 15: greedy generation after an 8,000-byte prompt with the same weights, imported into mbp
(``mbp import mblm``, cached generation) and in mblm 0.4.2 (``generate()``, a full forward per byte).
mblm's side runs in benchmarks/.venv-ref (made on first use, see bench_model.py); the two alternate
round by round and the ratio is taken per round, as in bench_model.py.

Run: python -m benchmarks.bench_mblm_import [--rounds N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from mbp.generate import generate
from mbp_mblm.cli import convert

from benchmarks.bench_model import REF_PYTHON, call, ensure_reference_venv
from benchmarks.common import save

PROMPT, NEW_MBP, NEW_MBLM = 8000, 512, 16


@torch.no_grad()
def mbp_rate(model: torch.nn.Module) -> dict:
    torch.manual_seed(0)
    prompt = torch.randint(0, 256, (PROMPT,))  # the very bytes mblm's worker draws
    start = time.perf_counter()
    out = generate(model, [prompt], max_new=NEW_MBP, stop_tokens=())[0]  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    return {"bytes_per_s": NEW_MBP / elapsed, "seconds": elapsed, "tokens": out}


def main(rounds: int) -> None:
    ensure_reference_venv()
    ref = str(REF_PYTHON)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        call(ref, "mblm_import_worker.py", "make", folder)
        model, _, _ = convert(folder / "config.yaml", folder / "weights.pth")
        model.eval()
        rows = []
        for _ in range(rounds):
            ours = mbp_rate(model)
            theirs = call(ref, "mblm_import_worker.py", "generate", folder, PROMPT, NEW_MBLM)
            if "failed" in theirs:
                raise SystemExit(f"mblm worker failed: {theirs['stderr']}")
            rows.append(
                {
                    "mbp_bytes_per_s": ours["bytes_per_s"],
                    "mblm_bytes_per_s": theirs["bytes_per_s"],
                    "ratio": ours["bytes_per_s"] / theirs["bytes_per_s"],
                    "same_first_bytes": ours["tokens"][:NEW_MBLM] == theirs["tokens"],
                }
            )
    save(
        "mblm_import",
        {
            "generate_512_after_8000_imported": {
                "rounds": rows,
                "speed_ratio_mbp_over_mblm": statistics.median(r["ratio"] for r in rows),
                "greedy_bytes_equal": all(r["same_first_bytes"] for r in rows),
                "threads": torch.get_num_threads(),
            }
        },
    )


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3)
