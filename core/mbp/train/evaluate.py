"""Evaluation: the held-out rows, then per-token cross-entropy and argmax hits for the head's metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from mbp.config import settled_batch_size, settled_seq_len
from mbp.data.batches import Batch, batches, spread
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog
from mbp.errors import warn
from mbp.heads import TaskHead
from mbp.model.decoder import MultiscaleDecoder
from mbp.protocol import END, EOS
from mbp.resolve import Resolved
from mbp.sample import EncodedSample, payload_bytes, payload_range, prompt_length
from mbp.train.precision import PrecisionChoice

FP32 = PrecisionChoice("fp32", "evaluation default")

ANSWER_TOKENS = 64
"""The most tokens an answer may take when generated (its END included)."""

Scored = list[tuple[EncodedSample, np.ndarray, np.ndarray]]
"""Each evaluated sample with its per-token nats and argmax hits."""


def eval_batches(resolved: Resolved, shards: list[str], log: SkipLog, align: int = 1) -> list[Batch]:
    """The held-out samples of ``shards`` in rows: all, or ``data.max_eval_samples`` spread over them."""
    data, split = resolved.pipeline.data, resolved.split
    picked = None
    if data.max_eval_samples:  # that many, spread over the set, not its first ones
        whole = sum(1 for _ in read_samples(shards, SkipLog(quiet=True)))
        picked = spread(data.max_eval_samples, whole) if whole > data.max_eval_samples else None
    stream = resolved.stream(training=False, repeat=False).samples(shards, log, picked=picked)
    # packed like training (one short sample per row would spend most of the work on padding), but a
    # text that fits a row is scored whole: cut to fill a row, its second piece would lose its context
    packed = batches(
        stream,
        settled_batch_size(data),
        settled_seq_len(data),
        pack=True,
        align=align,
        split=split,
        fill=False,
    )
    return [b for b, _ in packed]


def held_out_batches(resolved: Resolved, shards: list[str], align: int, quiet: bool) -> list[Batch]:
    """A run's held-out rows (``eval_batches``). Damaged, missing and skipped held-out shards and
    samples are reported in the lines training's are; a held-out set that yields no sample is said in
    one line, since the run then trains without evaluations or a best checkpoint."""
    log = SkipLog(quiet=quiet)
    rows = eval_batches(resolved, shards, log, align)
    if not rows and not quiet:
        warn(
            f"no usable held-out sample in {log.why_none(shards)}; "
            "the run trains without evaluation or a best checkpoint"
        )
    return rows


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
    was_training = model.training
    model.eval()
    try:
        scored = score_tokens(model, batches, precision=precision)
        generated = _generated(model, field, scored) if field else {}
        for index, (sample, nats, correct) in enumerate(scored):
            metrics.update(sample, nats, correct, generated.get(index))
    finally:
        model.train(was_training)
    weighted_nats, weight_sum = 0.0, 0.0
    for sample, nats, _ in scored:
        weighted_nats += float(np.dot(nats, sample.weights))
        weight_sum += float(sample.weights.sum())
    result = {**metrics.result(), **by_present_fields(head, scored, generated)}
    # the loss training minimises, on held-out data: set beside train_bpb, it shows memorising
    result["loss_bpb"] = weighted_nats / max(weight_sum, 1e-12) / math.log(2)
    return result


def by_present_fields(head: TaskHead, scored: Scored, generated: dict[int, bytes]) -> dict[str, Any]:
    """The head's task metric (the first number its metrics give) of each set of present fields, as
    ``accuracy[scene]``, where the samples come in more than one: a mixed pipeline's total hides the
    modality that lags. A set is named by its fields that some samples lack (by all its fields where it
    has none of those)."""
    present = [[span.field for span in sample.spans] for sample, _, _ in scored]
    common = set.intersection(*map(set, present)) if present else set()
    groups: dict[str, list[int]] = {}
    for index, fields in enumerate(present):
        named = [f for f in fields if f not in common] or fields
        groups.setdefault("+".join(named), []).append(index)
    out: dict[str, Any] = {}
    for name, indices in groups.items() if len(groups) > 1 else ():
        metrics = head.metrics()
        for index in indices:
            metrics.update(*scored[index], generated.get(index))
        key, value = next((k, v) for k, v in metrics.result().items() if isinstance(v, int | float))
        out[f"{key}[{name}]"] = value
    return out


@torch.no_grad()
def score_tokens(
    model: MultiscaleDecoder, batches: Iterable[Batch], *, precision: PrecisionChoice | None = None
) -> Scored:
    """Each sample of ``batches``, in order, with the nats and argmax hit of each of its tokens."""
    scored: Scored = []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            tokens = batch.tokens.to(device)
            with (precision or FP32).autocast(device):
                hidden = model.hidden(tokens, batch.begins.to(device))
            for index, (row, starts) in enumerate(zip(batch.rows, batch.starts, strict=True)):
                # scored in fp32 whatever the precision of the states
                token_nats, logits = model.token_nats(hidden[index].float(), tokens[index])
                nats = token_nats.cpu().numpy()
                correct = (logits.argmax(-1) == tokens[index]).cpu().numpy()
                for sample, offset in zip(row, starts, strict=True):
                    end = offset + len(sample.tokens)
                    scored.append((sample, nats[offset:end], correct[offset:end]))
    finally:
        model.train(was_training)
    return scored


def greedy_answers(model: MultiscaleDecoder, prompts: list[torch.Tensor]) -> list[bytes]:
    """What greedy decoding writes after each prompt (which ends with a segment's HDR) until the segment
    or the sample ends: the answer evaluation scores. The prompts are generated together, in one batch."""
    from mbp.generate import generate

    generated = generate(model, prompts, max_new=ANSWER_TOKENS, stop_tokens=(END, EOS))
    return [bytes(t for t in tokens if t < 256) for tokens in generated]


def _generated(model: MultiscaleDecoder, field: str, scored: Scored, group: int = 16) -> dict[int, bytes]:
    """What greedy decoding writes for ``field`` in each scored sample, by index.

    A hit needs no generation run: every payload byte and the END are the argmax given the truth before
    them, so greedy decoding writes exactly the payload. The misses are generated in groups of prompts
    of one length (cached prefill runs them together), not one by one.
    """
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
            for i, answer in zip(chunk, greedy_answers(model, prompts), strict=True):
                out[i] = answer
    return out
