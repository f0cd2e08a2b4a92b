"""Evaluation: per-token cross-entropy and argmax hits, handed to the task head's metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbp.data.batches import Batch
from mbp.data.encode import EncodedSample
from mbp.heads import TaskHead, payload_bytes, payload_range
from mbp.model.decoder import MultiscaleDecoder


@torch.no_grad()
def evaluate(
    model: MultiscaleDecoder, batches: Iterable[Batch], head: TaskHead, *, bf16: bool = False
) -> dict[str, Any]:
    metrics = head.metrics()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            tokens = batch.tokens.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                hidden = model.hidden(tokens)
            for index, row in enumerate(batch.rows):
                logits = model.to_logits(hidden[index].float())
                nats = F.cross_entropy(logits, tokens[index], reduction="none").cpu().numpy()
                correct = (logits.argmax(-1) == tokens[index]).cpu().numpy()
                offset = 0
                for sample in row:
                    end = offset + len(sample.tokens)
                    generated = _generate_for(model, head, sample, correct[offset:end])
                    metrics.update(sample, nats[offset:end], correct[offset:end], generated)
                    offset = end
    finally:
        model.train(was_training)
    return metrics.result()


def _generate_for(
    model: MultiscaleDecoder, head: TaskHead, sample: EncodedSample, correct: np.ndarray
) -> bytes | None:
    field = head.generate_field
    if not field:
        return None
    first, last = payload_range(sample, sample.span(field))
    if correct[first:last].all():
        # every payload byte and the END are the argmax given the truth before them: greedy decoding
        # writes exactly the payload, so only the misses need a generation run
        return payload_bytes(sample, field)
    from mbp.generate import generate_segment_payload

    return generate_segment_payload(model, sample, field)
