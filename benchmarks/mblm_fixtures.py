"""Issue 15's reference outputs: small mblm 0.4.2 models of 1, 2 and 3 stages, trained for a few steps,
saved the way mblm's trainer saves them (``config.yaml`` with a ``params`` section, ``.pth`` with
``{"MODEL": state_dict, "LOSS": loss}``), plus mblm's own logits and greedy generation for a prompt.
tests/test_mblm_import.py imports these and compares mbp's outputs with the stored ones (CI has no mblm).

Runs inside the reference venv (benchmarks/.venv-ref, see bench_model.py):
    benchmarks/.venv-ref/bin/python benchmarks/mblm_fixtures.py [OUT_DIR]   (default tests/fixtures/mblm)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from mblm import MBLM, MBLMModelConfig, MBLMReturnType
from mblm.utils.io import save_model_state
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN, NEW = 50, 40


def transformer(heads: int, head_dim: int, **extra: Any) -> dict[str, Any]:
    return {
        "block_type": "transformer",
        "attn_head_dims": head_dim,
        "attn_num_heads": heads,
        "attn_use_rot_embs": True,
        **extra,
    }


# Each covers options the others do not: an odd width (uneven token-shift halves), fixed and rotary
# stage positions, heads * head_dim != width, ff_multiplier 3, attention without rotary, checkpoint chunks.
MODELS: dict[str, dict[str, Any]] = {
    "one-stage": {
        "hidden_dims": [33],
        "num_layers": [2],
        "seq_lens": [128],
        "train_checkpoint_chunks": None,
        "block": transformer(3, 8, pos_emb_type="fixed"),
    },
    "two-stage": {
        "hidden_dims": [48, 32],
        "num_layers": [2, 2],
        "seq_lens": [16, 8],
        "train_checkpoint_chunks": None,
        "block": [
            transformer(3, 12, pos_emb_type="rope"),
            transformer(2, 16, pos_emb_type="fixed", ff_multiplier=3),
        ],
    },
    "three-stage": {
        "hidden_dims": [40, 32, 24],
        "num_layers": [1, 1, 2],
        "seq_lens": [8, 4, 4],
        "train_checkpoint_chunks": [2, 2],
        "block": [
            transformer(2, 12, attn_use_rot_embs=False),
            transformer(2, 16),
            transformer(2, 12, pos_emb_type="fixed"),
        ],
    },
}


def corpus() -> torch.Tensor:
    return torch.tensor(list((ROOT / "README.md").read_bytes()), dtype=torch.long)


def train(model: MBLM, data: torch.Tensor, length: int, steps: int) -> float:
    """A few steps, so greedy generation emits plausible bytes rather than a random model's pad token."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - length, (4,), generator=generator)
        batch = torch.stack([data[s : s + length] for s in starts.tolist()])
        loss = model(batch, return_type=MBLMReturnType.LOSS)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(loss.detach())


@torch.no_grad()
def make(name: str, spec: dict[str, Any], out: Path, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    params = {"num_tokens": 257, "pad_token_id": 256, **spec}
    model = MBLM(MBLMModelConfig.model_validate(params))
    length = 1
    for s in spec["seq_lens"]:
        length *= s
    with torch.enable_grad():
        loss = float(train(model, corpus(), length, steps))
    model.eval()
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    dumped = MBLMModelConfig.model_validate(params).model_dump()
    document = {"params": {**dumped, "input_seq_len": length}}
    (folder / "config.yaml").write_text(yaml.safe_dump(document))
    save_model_state(folder, "weights", model, loss)
    prompt = corpus()[1000 : 1000 + PROMPT_LEN]
    logits = model(prompt[None], return_type=MBLMReturnType.LOGITS)[0]
    generated = model.generate(prompt, num_tokens_to_generate=NEW, filter_thres=1.0, enable_progress=False)
    save_file({"logits": logits.contiguous()}, str(folder / "reference.safetensors"))
    reference = {"prompt": prompt.tolist(), "greedy": generated[PROMPT_LEN:].tolist(), "train_loss": loss}
    (folder / "reference.json").write_text(json.dumps(reference) + "\n")
    return {
        "name": name,
        "loss": loss,
        "greedy": bytes(t for t in reference["greedy"] if t < 256).decode("latin-1"),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "tests" / "fixtures" / "mblm")
    parser.add_argument("--steps", type=int, default=250, help="training steps per model")
    args = parser.parse_args()
    for model_name, model_spec in MODELS.items():
        print(json.dumps(make(model_name, model_spec, args.out, args.steps)))
