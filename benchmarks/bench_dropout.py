"""Training step with torch's CPU dropout masks against mbp's (``mbp.api.dropout``: a bulk NumPy mask), in
the transformer's residual, MLP and attention-probability dropout, on the bundled default pipeline's
training batches (thinned and varied as training makes them), alternating rounds in one process. Also
reported, not a default: the step with no attention-probability dropout (`attention_dropout: 0`, SDPA's
fused kernel).

Run: python -m benchmarks.bench_dropout [pipeline] [--registry PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from mbp.config import TrainConfig, settled_batch_size, settled_seq_len
from mbp.data.batches import Batch, batches, encoded_stream
from mbp.data.read import expand_shards
from mbp.data.skips import SkipLog
from mbp.model import dropout as mbp_dropout
from mbp.model.build import build_model
from mbp.planning.plan import plan_run
from mbp.planning.probe import Probe
from mbp.plugins import get_platform
from mbp.resolve import resolve
from mbp.train.optim import make_optimizer
from mbp_transformer import model as transformer
from torch import Tensor

from benchmarks.common import save

WARMUP, TIMED, ROUNDS = 3, 20, 4


MBP_MODULE, MBP_ATTENTION = mbp_dropout.Dropout.forward, transformer.explicit_attention


def _torch_module(self: torch.nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    return F.dropout(x, self.p, self.training)


def _torch_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """What the transformer ran before: SDPA's own dropout (its unfused path, torch's mask)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=p)


def _no_attention_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


VARIANTS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    "torch dropout": (_torch_module, _torch_attention),
    "mbp dropout (default)": (MBP_MODULE, MBP_ATTENTION),
    "mbp dropout, attention_dropout 0": (MBP_MODULE, _no_attention_dropout),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline", nargs="?")
    parser.add_argument("--registry")
    args = parser.parse_args()
    components = get_platform().components
    resolved = resolve(args.registry, args.pipeline, components=components)
    shards = expand_shards(resolved.pipeline.data.train_shards)
    resolved = plan_run(resolved, Probe(shards)).settings.applied(resolved)
    data = resolved.pipeline.data
    torch.manual_seed(0)
    model = build_model(resolved.pipeline.model, components).train()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    stream = encoded_stream(
        shards, resolved.encoder, settled_seq_len(data), SkipLog(quiet=True), augment=True
    )
    made = batches(
        stream, settled_batch_size(data), settled_seq_len(data), pack=data.pack, align=model.patch_len
    )
    ready: list[Batch] = [batch for (batch, _), _ in zip(made, range(WARMUP + TIMED), strict=False)]

    def step(batch: Batch) -> None:
        model.loss(batch.tokens, batch.weights, batch.begins).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(ROUNDS):
            for name, (module, attention) in VARIANTS.items():
                mbp_dropout.Dropout.forward = module
                transformer.explicit_attention = attention
                for batch in ready[:WARMUP]:
                    step(batch)
                start = time.perf_counter()
                for batch in ready[WARMUP:]:
                    step(batch)
                seconds[name].append((time.perf_counter() - start) / len(ready[WARMUP:]))
    finally:
        mbp_dropout.Dropout.forward = MBP_MODULE
        transformer.explicit_attention = MBP_ATTENTION
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    base = medians["torch dropout"]
    save(
        "dropout",
        {
            "pipeline": resolved.name,
            "step_seconds_by_round": {
                name: [round(v, 4) for v in values] for name, values in seconds.items()
            },
            "median_step_seconds": {name: round(v, 4) for name, v in medians.items()},
            "torch_over_variant": {name: round(base / v, 3) for name, v in medians.items()},
        },
    )


if __name__ == "__main__":
    main()
