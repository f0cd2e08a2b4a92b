"""Issue 5: task heads: loss weights, bits per byte, exact match that equals greedy generation."""

from __future__ import annotations

import math

import mbp.generate as mbp_generate
import numpy as np
import pytest
import torch
from mbp.codec import CodecTraits
from mbp.data.batches import collate
from mbp.errors import PluginError
from mbp.generate import generate
from mbp.protocol import BOS, END, EOS, Segment, encode_segment
from mbp.sample import EncodedSample, Span, payload_range, prompt_length
from mbp.train.evaluate import evaluate
from mbp.traits import codec_traits

from tests.conftest import tiny_model


def sample(question: bytes, answer: bytes, key: str = "k") -> EncodedSample:
    parts, spans, offset = [np.array([BOS], np.int16)], [], 1
    for field, payload in (("question", question), ("answer", answer)):
        tokens = encode_segment(Segment("text", payload))
        spans.append(Span(field, "text", offset, offset + len(tokens)))
        parts.append(tokens)
        offset += len(tokens)
    parts.append(np.array([EOS], np.int16))
    return EncodedSample("shard.tar", key, np.concatenate(parts), spans)


def head(components, name: str, **params):
    return components.build("heads", {"type": name, **params})


def test_vqa_weights_only_the_answer_and_eos(components) -> None:
    s = sample(b"what colour?", b"red")
    weights = head(components, "vqa", context_weight=0.25).token_weights(s)
    answer = s.span("answer")
    assert (weights[answer.start : answer.end] == 1).all() and weights[-1] == 1
    assert (weights[: answer.start] == 0.25).all()
    first, last = payload_range(s, answer)
    assert bytes(s.tokens[first : last - 1].astype(np.uint8)) == b"red" and s.tokens[last - 1] == END
    assert prompt_length(s, "answer") == first


def test_context_weight_is_the_codecs_unless_the_head_gives_one(components) -> None:
    s = sample(b"what colour?", b"red")
    q = s.spans[0]
    s.spans[0] = Span(
        q.field, q.codec, q.start, q.end, context_weight=0.3
    )  # a codec's CodecTraits.context_weight
    by_codec = head(components, "vqa").token_weights(s)
    assert np.allclose(by_codec[q.start : q.end], 0.3) and np.isclose(by_codec[0], 0.01)  # BOS: default
    answer = s.span("answer")
    assert (by_codec[answer.start : answer.end] == 1).all()
    given = head(components, "classify", label_field="answer", context_weight=0.05).token_weights(s)
    assert np.allclose(given[: answer.start], 0.05) and (given[answer.start :] == 1).all()


def test_a_codecs_context_weight_is_checked_and_named(components) -> None:
    reading = components.build("codecs", {"type": "wav"}).for_reading()
    assert codec_traits(reading).context_weight == pytest.approx(0.1)  # the log-mel view
    assert codec_traits(components.build("codecs", {"type": "pixels"})).context_weight is None

    class Loud:
        name, extension, traits = "loud", "bin", CodecTraits(context_weight=2.0)

    with pytest.raises(
        PluginError, match=r"codec 'loud': context_weight must be a number in \[0, 1\], got 2.0"
    ):
        codec_traits(Loud())  # type: ignore[arg-type]


def test_lm_bits_per_byte_overall_and_per_codec(components) -> None:
    s = sample(b"q", b"a")
    metrics = head(components, "lm").metrics()
    nats = np.full(len(s.tokens), math.log(2) * 3)  # 3 bits per token everywhere
    metrics.update(s, nats, np.zeros(len(s.tokens), bool))
    assert metrics.result() == {"bpb": pytest.approx(3.0), "bpb_text": pytest.approx(3.0)}


def test_accuracy_majority_and_confusion(components) -> None:
    metrics = head(components, "classify", label_field="answer").metrics()
    for answer, right, generated in ((b"low", True, None), (b"low", False, b"high"), (b"high", True, None)):
        s = sample(b"pitch?", answer)
        correct = np.ones(len(s.tokens), bool)
        if not right:
            correct[payload_range(s, s.span("answer"))[0]] = False
        metrics.update(s, np.zeros(len(s.tokens)), correct, generated)
    result = metrics.result()
    assert result["accuracy"] == pytest.approx(2 / 3) and result["majority_baseline"] == pytest.approx(2 / 3)
    assert result["answer_bits"] == 0.0
    assert result["confusion"] == {"high": {"high": 1}, "low": {"low": 1, "high": 1}}


def test_answer_bits_sum_the_answer_and_its_end_per_sample(components) -> None:
    metrics = head(components, "vqa").metrics()
    for answer in (b"no", b"maybe"):
        s = sample(b"is it?", answer)
        nats = np.full(len(s.tokens), math.log(2))  # 1 bit per token, context included
        first, last = payload_range(s, s.span("answer"))
        nats[first:last] = 2 * math.log(2)
        metrics.update(s, nats, np.ones(len(s.tokens), bool))
    assert metrics.result()["answer_bits"] == pytest.approx(2 * ((2 + 1) + (5 + 1)) / 2)


def test_teacher_forced_exact_match_equals_greedy_generation(components) -> None:
    """Accuracy is computed in one forward pass; it must agree with actually generating each answer."""
    torch.manual_seed(3)
    model = tiny_model(components, 2).eval()
    with torch.no_grad():
        model.to_logits.bias[END] += 3.0  # so that greedy answers end within a few bytes
    vqa = head(components, "vqa")
    built = []
    for index in range(8):
        question = bytes([97 + index]) * (index % 3 + 1)
        probe = sample(question, b"")
        prompt = torch.as_tensor(probe.tokens[: prompt_length(probe, "answer")].astype(np.int64))
        greedy = generate(model, [prompt], max_new=8, stop_tokens=(END, EOS))[0]
        payload = bytes(t for t in greedy if t < 256)
        if index % 2 or END not in greedy:
            payload = payload + b"!"  # one byte more than the model would say: a miss
        built.append(sample(question, payload, key=str(index)))
    for s in built:
        s.weights = vqa.token_weights(s)
    result = evaluate(model, [collate([[s] for s in built], 64)], vqa)
    expected = []
    for s in built:
        prompt = torch.as_tensor(s.tokens[: prompt_length(s, "answer")].astype(np.int64))
        out = generate(model, [prompt], max_new=16, stop_tokens=(END, EOS))[0]
        first, last = payload_range(s, s.span("answer"))
        expected.append(out[: last - first] == s.tokens[first:last].tolist())
    assert result["accuracy"] == pytest.approx(sum(expected) / len(expected))
    assert 0 < sum(expected) < len(expected), "the set must hold both hits and misses"


def test_classify_generates_labels_only_for_misses(components, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hits are predicted as their truth (greedy would write it); misses get a real generation run."""
    torch.manual_seed(3)
    model = tiny_model(components, 2).eval()
    with torch.no_grad():
        model.to_logits.bias[END] += 3.0
    classify = head(components, "classify", label_field="answer")
    built, labels, predicted = [], [], []
    for index in range(6):
        question = bytes([97 + index]) * (index % 3 + 1)
        probe = sample(question, b"")
        prompt = torch.as_tensor(probe.tokens[: prompt_length(probe, "answer")].astype(np.int64))
        tokens = generate(model, [prompt], max_new=64, stop_tokens=(END, EOS))[0]
        assert tokens[-1] == END
        greedy = bytes(t for t in tokens if t < 256)
        label = greedy if index % 2 else greedy + b"!"  # even indices miss by one extra byte
        built.append(sample(question, label, key=str(index)))
        labels.append(label)
        predicted.append(greedy)
    for s in built:
        s.weights = classify.token_weights(s)
    prompts: list[int] = []
    real = mbp_generate.generate
    monkeypatch.setattr(mbp_generate, "generate", lambda m, p, **k: prompts.append(len(p)) or real(m, p, **k))
    result = evaluate(model, [collate([[s] for s in built], 64)], classify)
    assert sum(prompts) == 3  # the three misses, and only they, are generated
    expected: dict[str, dict[str, int]] = {}
    for label, guess in zip(labels, predicted, strict=True):
        row = expected.setdefault(label.decode("utf-8", "replace"), {})
        row[guess.decode("utf-8", "replace")] = row.get(guess.decode("utf-8", "replace"), 0) + 1
    assert result["confusion"] == expected
    assert result["accuracy"] == pytest.approx(0.5)
