"""Runs inside benchmarks/.venv-ref: mambapy (Mamba-1, pure PyTorch) forward+backward time; one JSON line."""

from __future__ import annotations

import json
import sys
import time

import torch
from mambapy.mamba import Mamba, MambaConfig


def main(length: int, dim: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(d_model=dim, n_layers=1))
    x = torch.randn(1, length, dim)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        model(x).sum().backward()
        if i:
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "fwd_bwd_s": sorted(times)[len(times) // 2],
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
    )


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
