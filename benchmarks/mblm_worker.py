"""Runs inside the reference venv (benchmarks/.venv-ref, public `mblm` package); prints one JSON line.

The architecture mirrors mbp_worker.py: 2 stages, widths [256, 128], stage lengths [128, 64], layers
[4, 2], 4 heads per stage, rotary attention, GELU MLP of ratio 2, vocabulary 262.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from common import median_seconds  # this script's folder is on sys.path
from mblm import MBLM, MBLMModelConfig, MBLMReturnType, TransformerBlock

VOCAB, PAD = 262, 256


def build(seq_lens: list[int]) -> MBLM:
    blocks = [
        TransformerBlock(
            block_type="transformer",
            attn_head_dims=dim // 4,
            attn_num_heads=4,
            attn_use_rot_embs=True,
            use_flash_attn=True,
            ff_multiplier=2,
        )
        for dim in (256, 128)
    ]
    config = MBLMModelConfig(
        num_tokens=VOCAB,
        pad_token_id=PAD,
        hidden_dims=[256, 128],
        num_layers=[4, 2],
        seq_lens=seq_lens,
        train_checkpoint_chunks=None,
        block=blocks,
    )
    return MBLM(config)


def train_step(length: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build([length // 64, 64])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (batch, length))

    def step() -> None:
        model(ids, return_type=MBLMReturnType.LOSS).backward()
        optimizer.step()
        optimizer.zero_grad()

    return {"step_s": median_seconds(step, repeats), "params": sum(p.numel() for p in model.parameters())}


def peak_memory(length: int) -> dict:
    model = build([length // 64, 64])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (1, length))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = model(ids, return_type=MBLMReturnType.LOSS)
    loss.backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (peak - base) / 1024}


@torch.no_grad()
def generate(prompt: int, new: int) -> dict:
    torch.manual_seed(0)
    model = build([128, 64]).eval()
    prime = torch.randint(0, 256, (prompt,))
    start = time.perf_counter()
    model.generate(prime, num_tokens_to_generate=new, filter_thres=1.0, enable_progress=False)
    elapsed = time.perf_counter() - start
    return {"bytes_per_s": new / elapsed, "seconds": elapsed}


if __name__ == "__main__":
    task, *args = sys.argv[1:]
    result = {"train_step": train_step, "peak_memory": peak_memory, "generate": generate}[task](
        *map(int, args)
    )
    print(json.dumps(result))
