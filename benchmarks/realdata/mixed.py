"""A mixed images+speech set: ``mixed-digits``, which digit? from an 8x8 handwritten digit
(``image-digits``: scikit-learn's digits) or from espeak-ng saying it (``speech-digits``), one modality a
sample. Each part keeps its own held-out split (writers by position, voice variants by stable hash), so
no writer or voice variant is on both sides. Both parts answer with the digit ("0".."9"), so one model
learns one task from two modalities.

Baseline: one logistic regression on both feature sets side by side (the 64 pixels and the log-mel
features), zeros in the part a sample lacks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.realdata import images, speech
from benchmarks.realdata.shards import BuiltSet, Sample


def build_digits(features: Callable[[list[np.ndarray]], np.ndarray]) -> BuiltSet:
    pixels, spoken = images.build_digits(), speech.build_digits(features)
    digit = {word: str(index) for index, word in enumerate(speech.DIGIT_WORDS)}
    return BuiltSet(
        name="mixed-digits",
        task="mixed",
        source=f"{pixels.source}; {spoken.source}",
        split_rule=f"images {pixels.split_rule}; speech {spoken.split_rule}",
        train=pixels.train + [_relabelled(s, digit) for s in spoken.train],
        held_out=pixels.held_out + [_relabelled(s, digit) for s in spoken.held_out],
        features_train=_side_by_side(pixels.features_train, spoken.features_train),
        features_held_out=_side_by_side(pixels.features_held_out, spoken.features_held_out),
        labels_train=pixels.labels_train + [digit[w] for w in spoken.labels_train],
        labels_held_out=pixels.labels_held_out + [digit[w] for w in spoken.labels_held_out],
        extra={
            "held_out_by_modality": {"image": len(pixels.held_out), "speech": len(spoken.held_out)},
            "train_by_modality": {"image": len(pixels.train), "speech": len(spoken.train)},
        },
    )


def _relabelled(sample: Sample, digit: dict[str, str]) -> Sample:
    """``sample`` answering with the digit it names ("3" for "three")."""
    word = sample.fields["answer.txt"].decode()
    return Sample(sample.key, {**sample.fields, "answer.txt": digit[word].encode()})


def _side_by_side(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray:
    """Rows of ``first`` then rows of ``second``, each with the other's columns zero."""
    assert first is not None and second is not None
    top = np.hstack([first, np.zeros((len(first), second.shape[1]), dtype=first.dtype)])
    bottom = np.hstack([np.zeros((len(second), first.shape[1]), dtype=second.dtype), second])
    return np.vstack([top, bottom])
