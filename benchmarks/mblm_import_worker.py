"""Runs inside benchmarks/.venv-ref (public `mblm`): makes the checkpoint bench_mblm_import.py imports,
and times mblm's own generate() on it; prints one JSON line.

    make DIR             write DIR/config.yaml (trainer layout, `params` section) and DIR/weights.pth
    generate DIR P N     greedy N bytes after a P-byte prompt (seeded random bytes, as mbp's side uses)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import yaml
from mblm import MBLM, MBLMModelConfig
from mblm.utils.io import load_model_state, save_model_state

# bench_model.py's architecture: 2 stages, widths [256, 128], lengths [128, 64], layers [4, 2], 4 heads,
# rotary attention, GELU feed-forward of ratio 2; mblm's usual vocabulary of 256 bytes plus pad.
PARAMS = {
    "num_tokens": 257,
    "pad_token_id": 256,
    "hidden_dims": [256, 128],
    "num_layers": [4, 2],
    "seq_lens": [128, 64],
    "train_checkpoint_chunks": None,
    "block": [
        {
            "block_type": "transformer",
            "attn_head_dims": dim // 4,
            "attn_num_heads": 4,
            "attn_use_rot_embs": True,
            "use_flash_attn": True,
            "ff_multiplier": 2,
        }
        for dim in (256, 128)
    ],
}


def make(folder: Path) -> dict:
    torch.manual_seed(0)
    config = MBLMModelConfig.model_validate(PARAMS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"params": {**config.model_dump(), "input_seq_len": 8192}})
    )
    save_model_state(folder, "weights", MBLM(config), 0.0)
    return {"config": str(folder / "config.yaml"), "weights": str(folder / "weights.pth")}


@torch.no_grad()
def generate(folder: Path, prompt: int, new: int) -> dict:
    model, _ = load_model_state(folder / "weights.pth", MBLM(MBLMModelConfig.model_validate(PARAMS)))
    model.eval()
    torch.manual_seed(0)
    prime = torch.randint(0, 256, (prompt,))
    start = time.perf_counter()
    out = model.generate(prime, num_tokens_to_generate=new, filter_thres=1.0, enable_progress=False)
    elapsed = time.perf_counter() - start
    return {"bytes_per_s": new / elapsed, "seconds": elapsed, "tokens": out[prompt:].tolist()}


if __name__ == "__main__":
    task, target, *numbers = sys.argv[1:]
    result = make(Path(target)) if task == "make" else generate(Path(target), *map(int, numbers))
    print(json.dumps(result))
