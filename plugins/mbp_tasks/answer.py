"""``vqa`` and ``classify``: the answer (or label) segment is generated from the context segments.

Training weights the answer segment fully and the context segments by ``context_weight``; unset (the
default), each field's codec gives its weight (``CodecTraits.context_weight``: 0.1 for ``wav``'s log-mel
view) and other fields get ``CONTEXT_WEIGHT``, 0.01. Next-byte prediction on the context teaches the
model what its inputs look like, which a label of a few bytes a sample cannot. At weight 0 the model
learns slowly (spoken digits after 200 steps: 0.41 held-out accuracy at 0 against 0.75 at 0.1; 28x28
glyphs after 2,500 steps: 0.54 at 0 against 0.88 at 0.01); above a small weight the context crowds out
the answer, whose few bytes are then a tenth of the loss or less (28x28 glyphs: 0.88 at 0.01, 0.85 at
0.033, 0.81 at 0.1).

That context loss is most of a step's cost (the byte-level stage runs on every row that carries weight),
so each training sample scores only ``context_rows`` of its context rows, drawn afresh each time it is
seen, at ``context_weight / context_rows``: the expected loss is unchanged, and the model skips the
other rows exactly (``HeadDefaults.thins_context``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
from mbp.api import EncodedSample, HeadDefaults, payload_bytes, payload_range
from pydantic import BaseModel, ConfigDict, Field

from mbp_tasks.lm import BitsPerByte

CONTEXT_WEIGHT = 0.01
"""The context's weight where neither the head's params nor the field's codec give one. Chosen over the
real-data suite at its defaults, for the worst set against its baseline: at 0.1, 28x28 glyphs reached
0.879 against logistic regression's 0.951, at 0.01 0.937 (seed 1: 0.950); 16x16 glyphs and the bundled
demo gained. Spoken letters, 0.024 lower at 0.01 on two seeds, keep 0.1 through their codec (``wav``)."""


class ContextParams(BaseModel):
    """What ``vqa`` and ``classify`` share: how their context is weighted and thinned."""

    model_config = ConfigDict(extra="forbid")
    context_weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="unset: each context field's codec's weight (wav's log-mel view 0.1), else 0.01",
    )
    context_rows: float = Field(
        default=0.25, gt=0, le=1, description="share of context rows scored per training step"
    )


class AnswerParams(ContextParams):
    answer_field: str = "answer"


class ClassifyParams(ContextParams):
    label_field: str = "label"


class AnswerMetrics:
    """Exact match of the answer, the most common answer's share, the answer's mean bits (its payload
    and END: a finer measure than a match, which a few wrong samples move), bits per byte, confusion."""

    def __init__(self, field: str, confusion: bool) -> None:
        self.field = field
        self.confusion = confusion
        self.correct = 0
        self.total = 0
        self.answer_nats = 0.0
        self.answers: Counter[str] = Counter()
        self.pairs: dict[str, Counter[str]] = defaultdict(Counter)
        self.bpb = BitsPerByte()

    def update(
        self, sample: EncodedSample, nats: np.ndarray, correct: np.ndarray, generated: bytes | None = None
    ) -> None:
        first, last = payload_range(sample, sample.span(self.field))
        truth = payload_bytes(sample, self.field).decode("utf-8", "replace")
        hit = bool(correct[first:last].all())
        self.correct += hit
        self.total += 1
        self.answer_nats += float(nats[first:last].sum())
        self.answers[truth] += 1
        self.bpb.update(sample, nats, correct)
        if self.confusion:
            predicted = truth if hit else (generated or b"").decode("utf-8", "replace")
            self.pairs[truth][predicted] += 1

    def result(self) -> dict[str, object]:
        out: dict[str, object] = {
            "accuracy": self.correct / max(self.total, 1),
            "majority_baseline": max(self.answers.values(), default=0) / max(self.total, 1),
            "eval_samples": self.total,
            "answer_bits": self.answer_nats / max(self.total, 1) / math.log(2),
        }
        out.update(self.bpb.result())
        if self.confusion:
            out["confusion"] = {truth: dict(row) for truth, row in sorted(self.pairs.items())}
        return out


DROPOUT = 0.1
"""Labelled sets are small and seen many times over in a run: without dropout the held-out loss turns up
within a few hundred steps (held-out glyphs from pixels 0.983 without, 0.989-0.994 with)."""


def answer_defaults(field: str) -> HeadDefaults:
    """What an answer head sets: the field it answers, dropout, context thinning, accuracy picks the best."""
    return HeadDefaults(
        answers=field, dropout=DROPOUT, thins_context=True, selection_metric="accuracy", selection_mode="max"
    )


class VqaHead:
    name = "vqa"

    def __init__(self, params: AnswerParams) -> None:
        self.field = params.answer_field
        self.context_weight = params.context_weight
        self.context_rows = params.context_rows
        self.generate_field: str | None = None
        self.defaults = answer_defaults(self.field)

    def answer_mask(self, sample: EncodedSample) -> np.ndarray:
        answer = np.zeros(len(sample.tokens), dtype=bool)
        span = sample.span(self.field)
        answer[span.start : span.end] = True
        if span.end == len(sample.tokens) - 1:
            answer[-1] = True  # EOS right after the answer: knowing when to stop is part of answering
        return answer

    def token_weights(self, sample: EncodedSample) -> np.ndarray:
        return self._weights(sample, self.answer_mask(sample))

    def _weights(self, sample: EncodedSample, answer: np.ndarray) -> np.ndarray:
        """1 on the answer; the context at ``context_weight``, or where that is unset at each field's
        codec's weight (``CodecTraits.context_weight``), else ``CONTEXT_WEIGHT``."""
        given = self.context_weight
        context = np.full(len(answer), CONTEXT_WEIGHT if given is None else given, np.float32)
        if given is None:
            for span in sample.spans:
                if span.context_weight is not None:
                    context[span.start : span.end] = span.context_weight
        return np.where(answer, np.float32(1.0), context)

    def training_weights(self, sample: EncodedSample, rng: np.random.Generator, row: int) -> np.ndarray:
        """``token_weights`` with a random ``context_rows`` share of the context-only rows kept, weighted
        up to keep the expected loss; rows holding answer tokens are always kept, as they are."""
        answer = self.answer_mask(sample)
        weights = self._weights(sample, answer)
        if self.context_rows >= 1 or not weights[~answer].any():
            return weights
        rows = -(-(len(weights) - 1) // row)  # row r predicts tokens r * row + 1 ... (r + 1) * row
        targets = np.zeros(rows * row, dtype=bool)
        targets[: len(weights) - 1] = answer[1:]
        holds_answer = targets.reshape(rows, row).any(axis=1)
        drawn = rng.random(rows) < self.context_rows
        scale = np.where(holds_answer, 1.0, np.where(drawn, 1.0 / self.context_rows, 0.0))
        weights[1:] *= np.repeat(scale, row)[: len(weights) - 1]  # answer tokens sit in rows of scale 1
        return weights

    def metrics(self) -> AnswerMetrics:
        return AnswerMetrics(self.field, confusion=False)


class ClassifyHead(VqaHead):
    name = "classify"

    def __init__(self, params: ClassifyParams) -> None:
        self.field = params.label_field
        self.context_weight = params.context_weight
        self.context_rows = params.context_rows
        self.generate_field = params.label_field
        self.defaults = answer_defaults(self.field)

    def metrics(self) -> AnswerMetrics:
        return AnswerMetrics(self.field, confusion=True)
