"""The mbp side of bench_model.py; prints one JSON line. Same architecture as mblm_worker.py."""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from mbp.generate import generate as mbp_generate
from mbp.model.build import build_model
from mbp.plugins import get_platform


def config(length: int | None, *, lean: bool = False) -> dict:
    def stage(dim: int, layers: int, seq_len: int | None) -> dict:
        backbone = {"type": "transformer", "heads": 4, "mlp": "gelu", "mlp_ratio": 2.0}
        return {"backbone": backbone, "dim": dim, "layers": layers, "seq_len": seq_len, "checkpoint": lean}

    stages = [stage(256, 4, None if length is None else length // 64), stage(128, 2, 64)]
    return {"stages": stages, "loss_chunk": 8192 if lean else None}


def train_step(length: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(config(length), get_platform().components)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, 256, (batch, length))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        model.loss(ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:
            times.append(time.perf_counter() - start)
    return {"step_s": sorted(times)[len(times) // 2], "params": sum(p.numel() for p in model.parameters())}


def peak_memory(length: int, lean: int = 1) -> dict:
    model = build_model(config(length, lean=bool(lean)), get_platform().components).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (1, length))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.loss(ids).loss.backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (peak - base) / 1024}


def generate(prompt: int, new: int, batch: int = 1) -> dict:
    torch.manual_seed(0)
    model = build_model(config(None), get_platform().components).eval()
    prompts = [torch.randint(0, 256, (prompt,)) for _ in range(batch)]
    start = time.perf_counter()
    mbp_generate(model, prompts, max_new=1, stop_tokens=())
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    out = mbp_generate(model, prompts, max_new=new, stop_tokens=())
    elapsed = time.perf_counter() - start
    produced = sum(len(row) for row in out)
    return {
        "bytes_per_s": produced / elapsed,
        "seconds": elapsed,
        "prefill_s": prefill,
        "decode_s_per_byte": (elapsed - prefill) / (new - 1),
    }


if __name__ == "__main__":
    task, *args = sys.argv[1:]
    result = {"train_step": train_step, "peak_memory": peak_memory, "generate": generate}[task](
        *map(int, args)
    )
    print(json.dumps(result))
