"""Issue 7: the Mamba backbone's PyTorch path against mambapy (forward + backward, L=4096,
d_model=256, one layer), and per-byte generation time with a Mamba global stage for 64 KiB vs 1 KiB
prompts. Side by side in one run; mambapy runs in benchmarks/.venv-ref (see bench_model.py).

Run: python benchmarks/bench_mamba.py
"""

from __future__ import annotations

import json
import subprocess
import time

import torch
from mbp.generate import Sampling, sample_next
from mbp.model.build import build_model
from mbp.plugins import get_platform
from mbp_mamba.backbone import Mamba, MambaParams

from benchmarks.bench_model import HERE, REF_PYTHON, ensure_reference_venv
from benchmarks.common import median_seconds, save


def ours(length: int, dim: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = Mamba(MambaParams(state=16, headdim=32, expand=2, chunk=64), dim=dim, layers=1)
    x = torch.randn(1, length, dim)
    seconds = median_seconds(lambda: model(x).sum().backward(), repeats)
    return {"fwd_bwd_s": seconds, "params": sum(p.numel() for p in model.parameters())}


def per_byte(prompt: int, new: int = 256) -> float:
    torch.manual_seed(0)
    config = {
        "stages": [
            {"backbone": {"type": "mamba", "state": 64, "headdim": 32}, "dim": 256, "layers": 4},
            {"backbone": {"type": "transformer", "heads": 4}, "dim": 128, "layers": 2, "seq_len": 8},
        ]
    }
    model = build_model(config, get_platform().components).eval()
    with torch.no_grad():
        state, logits = model.prime([torch.randint(0, 256, (prompt,))], new)  # prefill, not timed
        start = time.perf_counter()
        for _ in range(new):
            logits = model.step(sample_next(logits, Sampling(), None), state)
    return (time.perf_counter() - start) / new


def main() -> None:
    ensure_reference_venv()
    length, dim, repeats = 4096, 256, 5
    a = ours(length, dim, repeats)
    done = subprocess.run(
        [str(REF_PYTHON), str(HERE / "mamba_ref_worker.py"), str(length), str(dim), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    b = json.loads(done.stdout.strip().splitlines()[-1])
    short, long = per_byte(1024), per_byte(65536)
    save(
        "mamba",
        {
            "fwd_bwd_L4096_d256": {
                "mbp_mamba2_chunked": a,
                "mambapy_mamba1": b,
                "speedup": b["fwd_bwd_s"] / a["fwd_bwd_s"],
            },
            "generation_per_byte_s": {"1KiB": short, "64KiB": long, "ratio_64k_over_1k": long / short},
        },
    )


if __name__ == "__main__":
    main()
