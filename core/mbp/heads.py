"""The contract a task head fulfils. Heads are registered by plugins.

A head decides which tokens a sample is trained on (``token_weights``) and turns evaluation results into
metrics. Evaluation hands each sample's per-token cross-entropy (nats) and whether greedy argmax got each
token right. Exact match by teacher-forced argmax equals exact match of greedy generation: greedy decoding
reproduces a target iff every target token is the argmax given the true prefix. Heads that need the
generated text itself (a confusion matrix) say so with ``generate_field``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from mbp.planning.constants import DEFAULT_BATCH
from mbp.sample import EncodedSample


@runtime_checkable
class Metrics(Protocol):
    def update(
        self, sample: EncodedSample, nats: np.ndarray, correct: np.ndarray, generated: bytes | None = None
    ) -> None: ...

    def result(self) -> dict[str, object]: ...


@runtime_checkable
class TaskHead(Protocol):
    """The methods every head has. What it sets by default is declared in ``defaults: HeadDefaults`` (an
    attribute; absent: ``HeadDefaults()``); a head whose defaults set ``thins_context`` also has
    ``training_weights(sample, rng, row) -> np.ndarray`` (float32, one weight a token)."""

    name: str
    generate_field: str | None
    """The field whose generated payload ``Metrics.update`` receives; None: nothing is generated."""

    def token_weights(self, sample: EncodedSample) -> np.ndarray:
        """Loss weight of each of ``sample.tokens`` (float32, same length)."""
        ...

    def metrics(self) -> Metrics:
        """A fresh accumulator for one evaluation."""
        ...


@dataclass(frozen=True)
class HeadDefaults:
    """What a head declares about its task, as its ``defaults`` attribute: one value, read once when the
    pipeline is resolved, never asked again. A head without ``defaults`` has these. Each sets what a
    pipeline leaves unset; a pipeline's own setting wins."""

    answers: str | None = None
    """The one field the head answers (``vqa``, ``classify``): the pipeline must have it, last, and every
    field before it is context, encoded through its codec's reading view. None: no field is answered."""
    batch_size: int = DEFAULT_BATCH
    """Rows a step where ``data.batch_size`` is unset: the rows a step its task learns most from in a run
    of minutes."""
    dropout: float = 0.0
    """Dropout, in [0, 1), for every backbone that takes a ``dropout`` parameter where neither the
    backbone's reference nor ``model.dropout`` sets one."""
    split_samples: bool = False
    """True when any window of a sample is a sample of the task (``lm``: text reads the same in any
    window), so rows may cut samples instead of skipping long ones and padding short ones
    (``mbp.data.batches.batches``). False: samples stay whole; a question cut off from its answer
    teaches nothing."""
    thins_context: bool = False
    """Training weights come from the head's ``training_weights(sample, rng, row)``, which may score only
    part of a sample's cheap-to-skip tokens each step (``row`` is the byte-level stage's row length: the
    row starting at a sample's token ``r * row + 1`` predicts its tokens up to ``(r + 1) * row``, and a
    row whose targets all weigh 0 is skipped by the model, exactly); ``rng`` is seeded per sample, so a
    resumed run draws the same. False, and always in evaluation: ``token_weights``."""
    selection_metric: str = "loss_bpb"
    """The held-out metric that picks the best checkpoint (``out/checkpoints/best``)."""
    selection_mode: Literal["min", "max"] = "min"
    """Whether ``selection_metric`` is best low or high."""
