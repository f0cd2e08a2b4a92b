"""The contract a task head fulfils. Heads are registered by plugins.

A head decides which tokens a sample is trained on (``token_weights``) and turns evaluation results into
metrics. Evaluation hands each sample's per-token cross-entropy (nats) and whether greedy argmax got each
token right. Exact match by teacher-forced argmax equals exact match of greedy generation: greedy decoding
reproduces a target iff every target token is the argmax given the true prefix. Heads that need the
generated text itself (a confusion matrix) say so with ``generate_field``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mbp.sample import EncodedSample


@runtime_checkable
class Metrics(Protocol):
    def update(
        self, sample: EncodedSample, nats: np.ndarray, correct: np.ndarray, generated: bytes | None = None
    ) -> None: ...

    def result(self) -> dict[str, object]: ...


@runtime_checkable
class TaskHead(Protocol):
    name: str
    generate_field: str | None
    """The field whose generated payload ``Metrics.update`` receives; None: nothing is generated."""

    def token_weights(self, sample: EncodedSample) -> np.ndarray:
        """Loss weight of each of ``sample.tokens`` (float32, same length)."""
        ...

    def metrics(self) -> Metrics:
        """A fresh accumulator for one evaluation."""
        ...


@runtime_checkable
class FieldHead(Protocol):
    """Optional for a head: the one field it answers (``vqa``, ``classify``); the core checks that the
    pipeline has that field before anything is trained."""

    field: str


@runtime_checkable
class RegularizedHead(Protocol):
    """Optional for a head: the dropout its task wants in every backbone that takes a ``dropout`` parameter,
    where neither the backbone's reference nor ``model.dropout`` sets one (without it: none)."""

    dropout: float


@runtime_checkable
class BatchingHead(Protocol):
    """Optional for a head: the rows a step its task learns most from in a run of minutes, where
    ``data.batch_size`` is unset (without it: ``mbp.planning.constants.DEFAULT_BATCH``)."""

    batch_size: int


@runtime_checkable
class SplittingHead(Protocol):
    """Optional for a head: ``split_samples`` True when any window of a sample is a sample of its task
    (``lm``: text reads the same in any window), so rows may cut samples instead of skipping long ones
    and padding short ones (``mbp.data.batches.batches``). Without it, samples stay whole: a question
    cut off from its answer teaches nothing."""

    split_samples: bool


@runtime_checkable
class ThinningHead(Protocol):
    """Optional for a head: training weights that score only part of a sample's cheap-to-skip tokens
    each step, drawn from ``rng`` (seeded per sample, so a resumed run draws the same). ``row`` is the
    byte-level stage's row length: the row starting at a sample's token ``r * row + 1`` predicts its
    tokens up to ``(r + 1) * row`` (samples start on row boundaries), and a row whose targets all weigh
    0 is skipped by the model, exactly. Evaluation always uses ``token_weights``."""

    def training_weights(self, sample: EncodedSample, rng: np.random.Generator, row: int) -> np.ndarray: ...


def splits_samples(head: TaskHead) -> bool:
    return isinstance(head, SplittingHead) and head.split_samples
