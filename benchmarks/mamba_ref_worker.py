"""Runs inside benchmarks/.venv-ref: mambapy (Mamba-1, pure PyTorch) forward+backward time; one JSON line."""

from __future__ import annotations

import json
import sys

import torch
from common import median_seconds  # this script's folder is on sys.path
from mambapy.mamba import Mamba, MambaConfig


def main(length: int, dim: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(d_model=dim, n_layers=1))
    x = torch.randn(1, length, dim)
    seconds = median_seconds(lambda: model(x).sum().backward(), repeats)
    print(json.dumps({"fwd_bwd_s": seconds, "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
