"""Issue 45: evaluating a mixed pipeline reports the head's metrics per set of present fields beside the
total, so a user sees which modality lags."""

from __future__ import annotations

import numpy as np
import pytest
from mbp.protocol import BOS, EOS, Segment, encode_segment
from mbp.sample import EncodedSample, Span, payload_range
from mbp.train.evaluate import Scored, by_present_fields


def sample(fields: dict[str, bytes]) -> EncodedSample:
    parts, spans, offset = [np.array([BOS], np.int16)], [], 1
    for field, payload in fields.items():
        tokens = encode_segment(Segment("text", payload))
        spans.append(Span(field, "text", offset, offset + len(tokens)))
        parts.append(tokens)
        offset += len(tokens)
    parts.append(np.array([EOS], np.int16))
    return EncodedSample("shard.tar", "k", np.concatenate(parts), spans)


def scored_sample(fields: dict[str, bytes], right: bool) -> tuple[EncodedSample, np.ndarray, np.ndarray]:
    s = sample(fields)
    correct = np.ones(len(s.tokens), bool)
    if not right:
        correct[payload_range(s, s.span("answer"))[0]] = False
    return s, np.zeros(len(s.tokens)), correct


def test_accuracy_per_set_of_present_fields(components) -> None:
    head = components.build("heads", {"type": "vqa"})
    scored: Scored = [
        scored_sample({"scene": b"red", "question": b"colour?", "answer": b"red"}, True),
        scored_sample({"scene": b"red", "question": b"colour?", "answer": b"red"}, False),
        scored_sample({"scene": b"blue", "question": b"colour?", "answer": b"blue"}, False),
        scored_sample({"tone": b"hi", "question": b"pitch?", "answer": b"high"}, True),
        scored_sample({"question": b"one plus one?", "answer": b"2"}, True),
    ]
    out = by_present_fields(head, scored, {})
    # a sample with only the fields every sample has is named by them
    assert out == {
        "accuracy[scene]": pytest.approx(1 / 3),
        "accuracy[tone]": 1.0,
        "accuracy[question+answer]": 1.0,
    }


def test_one_set_of_fields_adds_nothing(components) -> None:
    head = components.build("heads", {"type": "vqa"})
    scored: Scored = [scored_sample({"question": b"q", "answer": b"a"}, right) for right in (True, False)]
    assert by_present_fields(head, scored, {}) == {}
    assert by_present_fields(head, [], {}) == {}
