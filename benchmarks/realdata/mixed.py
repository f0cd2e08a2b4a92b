"""Mixed images+speech sets, one modality a sample, one task from two modalities:

- ``mixed-digits``: which digit? from an 8x8 handwritten digit (``image-digits``: scikit-learn's digits)
  or from espeak-ng saying it (``speech-digits``); speech answers with the digit ("3", not "three"). The
  image's 8-byte row is the length of a fixed 8-byte patch.
- ``mixed-letters``: which letter? from a 28x28 lowercase glyph (``image-lowercase``) or from espeak-ng
  saying its name (``speech-letters``), both answering "a".."z". A 28-byte image row beside 16-byte
  spectrogram frames: fields whose rows have different lengths, so no one fixed patch fits both.

Each part keeps its own held-out split (writers by position or font design groups, voice variants by
stable hash), so no writer, font design or voice variant is on both sides.

Baseline: one logistic regression on both feature sets side by side (the pixels and the log-mel
features), zeros in the part a sample lacks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.realdata import images, speech
from benchmarks.realdata.shards import BuiltSet, Sample


def build_digits(features: Callable[[list[np.ndarray]], np.ndarray]) -> BuiltSet:
    digit = {word: str(index) for index, word in enumerate(speech.DIGIT_WORDS)}
    return _mixed("mixed-digits", images.build_digits(), speech.build_digits(features), digit)


def build_letters(features: Callable[[list[np.ndarray]], np.ndarray]) -> BuiltSet:
    letter = {word: word for word in speech.LETTER_WORDS}
    return _mixed("mixed-letters", images.build_lowercase(), speech.build_letters(features), letter)


def _mixed(name: str, pixels: BuiltSet, spoken: BuiltSet, answer: dict[str, str]) -> BuiltSet:
    """``pixels`` and ``spoken`` in one set, each keeping its split; speech answers as ``answer`` maps it."""
    return BuiltSet(
        name=name,
        task="mixed",
        source=f"{pixels.source}; {spoken.source}",
        split_rule=f"images {pixels.split_rule}; speech {spoken.split_rule}",
        train=pixels.train + [_relabelled(s, answer) for s in spoken.train],
        held_out=pixels.held_out + [_relabelled(s, answer) for s in spoken.held_out],
        features_train=_side_by_side(pixels.features_train, spoken.features_train),
        features_held_out=_side_by_side(pixels.features_held_out, spoken.features_held_out),
        labels_train=pixels.labels_train + [answer[w] for w in spoken.labels_train],
        labels_held_out=pixels.labels_held_out + [answer[w] for w in spoken.labels_held_out],
        extra={
            "held_out_by_modality": {"image": len(pixels.held_out), "speech": len(spoken.held_out)},
            "train_by_modality": {"image": len(pixels.train), "speech": len(spoken.train)},
        },
    )


def _relabelled(sample: Sample, answer: dict[str, str]) -> Sample:
    """``sample`` answering as ``answer`` maps its answer ("3" for "three")."""
    word = sample.fields["answer.txt"].decode()
    return Sample(sample.key, {**sample.fields, "answer.txt": answer[word].encode()})


def _side_by_side(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray:
    """Rows of ``first`` then rows of ``second``, each with the other's columns zero."""
    assert first is not None and second is not None
    top = np.hstack([first, np.zeros((len(first), second.shape[1]), dtype=first.dtype)])
    bottom = np.hstack([np.zeros((len(second), first.shape[1]), dtype=second.dtype), second])
    return np.vstack([top, bottom])
