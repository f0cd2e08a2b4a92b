"""Evaluation: per-token cross-entropy and argmax hits, handed to the task head's metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbp.data.batches import Batch
from mbp.data.encode import EncodedSample
from mbp.heads import TaskHead, payload_bytes, payload_range, prompt_length
from mbp.model.decoder import MultiscaleDecoder
from mbp.protocol import END, EOS
from mbp.train.precision import PrecisionChoice

FP32 = PrecisionChoice("fp32", "evaluation default")

Scored = list[tuple[EncodedSample, np.ndarray, np.ndarray]]
"""Each evaluated sample with its per-token nats and argmax hits."""


@torch.no_grad()
def evaluate(
    model: MultiscaleDecoder,
    batches: Iterable[Batch],
    head: TaskHead,
    *,
    precision: PrecisionChoice | None = None,
) -> dict[str, Any]:
    metrics = head.metrics()
    field = head.generate_field
    scored: Scored = []
    weighted_nats, weight_sum = 0.0, 0.0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            tokens = batch.tokens.to(device)
            with (precision or FP32).autocast(device):
                hidden = model.hidden(tokens, batch.begins.to(device))
            for index, (row, starts) in enumerate(zip(batch.rows, batch.starts, strict=True)):
                logits = model.to_logits(hidden[index].float())
                nats = F.cross_entropy(logits, tokens[index], reduction="none").cpu().numpy()
                correct = (logits.argmax(-1) == tokens[index]).cpu().numpy()
                for sample, offset in zip(row, starts, strict=True):
                    end = offset + len(sample.tokens)
                    scored.append((sample, nats[offset:end], correct[offset:end]))
                    weighted_nats += float(np.dot(nats[offset:end], sample.weights))
                    weight_sum += float(sample.weights.sum())
        generated = _generated(model, field, scored) if field else {}
        for index, (sample, nats, correct) in enumerate(scored):
            metrics.update(sample, nats, correct, generated.get(index))
    finally:
        model.train(was_training)
    result = metrics.result()
    # the loss training minimises, on held-out data: set beside train_bpb, it shows memorising
    result["loss_bpb"] = weighted_nats / max(weight_sum, 1e-12) / math.log(2)
    return result


def _generated(model: MultiscaleDecoder, field: str, scored: Scored, group: int = 16) -> dict[int, bytes]:
    """What greedy decoding writes for ``field`` in each scored sample, by index.

    A hit needs no generation run: every payload byte and the END are the argmax given the truth before
    them, so greedy decoding writes exactly the payload. The misses are generated in groups of prompts
    of one length (cached prefill runs them together), not one by one.
    """
    from mbp.generate import generate

    out: dict[int, bytes] = {}
    misses: dict[int, list[int]] = {}
    for index, (sample, _, correct) in enumerate(scored):
        first, last = payload_range(sample, sample.span(field))
        if correct[first:last].all():
            out[index] = payload_bytes(sample, field)
        else:
            misses.setdefault(prompt_length(sample, field), []).append(index)
    for cut, indices in misses.items():
        for start in range(0, len(indices), group):
            chunk = indices[start : start + group]
            prompts = [torch.as_tensor(scored[i][0].tokens[:cut].astype("int64")) for i in chunk]
            for i, tokens in zip(
                chunk, generate(model, prompts, max_new=64, stop_tokens=(END, EOS)), strict=True
            ):
                out[i] = bytes(t for t in tokens if t < 256)
    return out
