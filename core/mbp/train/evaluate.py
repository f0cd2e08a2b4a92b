"""Evaluation: per-token cross-entropy and argmax hits, handed to the task head's metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbp.data.batches import Batch
from mbp.heads import payload_bytes, payload_range
from mbp.model.decoder import MultiscaleDecoder
from mbp.train.precision import PrecisionChoice

FP32 = PrecisionChoice("fp32", "evaluation default")


@torch.no_grad()
def evaluate(
    model: MultiscaleDecoder, batches: Iterable[Batch], head: Any, *, precision: PrecisionChoice | None = None
) -> dict[str, Any]:
    metrics = head.metrics()
    weighted_nats, weight_sum = 0.0, 0.0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            tokens = batch.tokens.to(device)
            with (precision or FP32).autocast(device):
                hidden = model.hidden(tokens)
            for index, (row, starts) in enumerate(zip(batch.rows, batch.starts, strict=True)):
                logits = model.to_logits(hidden[index].float())
                nats = F.cross_entropy(logits, tokens[index], reduction="none").cpu().numpy()
                correct = (logits.argmax(-1) == tokens[index]).cpu().numpy()
                for sample, offset in zip(row, starts, strict=True):
                    end = offset + len(sample.tokens)
                    generated = _generate_for(model, head, sample, correct[offset:end])
                    metrics.update(sample, nats[offset:end], correct[offset:end], generated)
                    weighted_nats += float(np.dot(nats[offset:end], sample.weights))
                    weight_sum += float(sample.weights.sum())
    finally:
        model.train(was_training)
    result = metrics.result()
    # the loss training minimises, on held-out data: set beside train_bpb, it shows memorising
    result["loss_bpb"] = weighted_nats / max(weight_sum, 1e-12) / math.log(2)
    return result


def _generate_for(model: MultiscaleDecoder, head: Any, sample: Any, correct: np.ndarray) -> bytes | None:
    field = getattr(head, "generate_field", None)
    if not field:
        return None
    first, last = payload_range(sample, sample.span(field))
    if correct[first:last].all():
        # every payload byte and the END are the argmax given the truth before them: greedy decoding
        # writes exactly the payload, so only the misses need a generation run
        return payload_bytes(sample, field)
    from mbp.generate import generate_segment_payload

    return generate_segment_payload(model, sample, field)
