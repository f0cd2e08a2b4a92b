"""Boundary rules: where patches start in a token stream, the same offline and one token at a time."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from mbp.boundaries import (
    FixedLength,
    PatchPlacer,
    WordStarts,
    cut_long,
    describe,
    patch_starts,
    payload_starts,
)
from mbp.config.boundary_rules import rule_from_json, rule_to_json
from mbp.protocol import BOS, END, EOS, HDR, PAD, SEG, Segment, encode_sample


def _text(value: str) -> np.ndarray:
    return np.frombuffer(value.encode(), dtype=np.uint8).astype(np.int64)


def _pieces(tokens: np.ndarray, starts: np.ndarray) -> list[list[int]]:
    cuts = [*np.flatnonzero(starts).tolist(), len(tokens)]
    return [tokens[a:b].tolist() for a, b in itertools.pairwise(cuts)]


def test_fixed_length_starts_every_n_bytes() -> None:
    assert np.flatnonzero(payload_starts(np.zeros(10, np.int64), FixedLength(4))).tolist() == [0, 4, 8]
    with pytest.raises(ValueError, match="at least 1"):
        FixedLength(0)


def test_a_word_starts_a_patch_and_keeps_the_delimiters_that_follow_it() -> None:
    text = _text("hi, you  all\n\n    x.y")
    starts = payload_starts(text, WordStarts())
    words = [bytes(p).decode() for p in _pieces(text, starts)]
    assert words == ["hi, ", "you  ", "all\n\n    ", "x.", "y"]


def test_an_indented_keyword_stays_whole() -> None:
    """The indentation ends the line before it: twelve spaces and ``return`` do not share 16 bytes."""
    text = _text("f(x)\n            return x\n")
    pieces = _pieces(text, cut_long(payload_starts(text, WordStarts()), 16))
    assert [bytes(p).decode() for p in pieces] == ["f(", "x)\n            ", "return ", "x\n"]


def test_words_in_other_scripts_stay_whole() -> None:
    text = _text("мир дом")  # 2-byte UTF-8 letters: no byte of them is a delimiter
    words = [bytes(p).decode() for p in _pieces(text, payload_starts(text, WordStarts()))]
    assert words == ["мир ", "дом"]


def test_cut_long_splits_runs_every_longest_tokens() -> None:
    starts = np.zeros(11, dtype=bool)
    starts[5] = True
    assert np.flatnonzero(cut_long(starts, 3)).tolist() == [0, 3, 5, 8]


def test_stream_markers_place_boundaries_of_their_own() -> None:
    tokens = encode_sample([Segment("text", b"a cd"), Segment("wav", bytes(range(10)))]).astype(np.int64)
    starts = patch_starts(tokens, {"text": WordStarts()}, longest=8)
    pieces = _pieces(tokens, starts)
    assert pieces == [
        [BOS],
        [SEG, *b"text", HDR, *b"a "],  # a text payload's first word shares its header's patch
        [*b"cd", END],  # words by the text rule; END closes the payload's last patch
        [SEG, *b"wav", HDR],  # a header patch
        [*range(8)],  # a codec without a rule: fixed patches of the longest length, from its first byte
        [8, 9, END],
        [EOS],
    ]


def test_a_header_and_first_word_are_cut_at_the_longest() -> None:
    tokens = np.array([SEG, *b"text", HDR, *b"abcdefgh"], dtype=np.int64)
    pieces = _pieces(tokens, patch_starts(tokens, {"text": WordStarts()}, longest=8))
    assert pieces == [[SEG, *b"text", HDR, *b"ab"], [*b"cdefgh"]]


def test_long_words_are_cut_at_the_rules_longest() -> None:
    tokens = np.array([SEG, *b"t", HDR, *b"x abcdefg hi", END], dtype=np.int64)
    pieces = _pieces(tokens, patch_starts(tokens, {"t": WordStarts(longest=3)}, longest=8))
    assert pieces == [[SEG, *b"t", HDR, *b"x "], [*b"abc"], [*b"def"], [*b"g "], [*b"hi", END]]


def test_padding_runs_are_cut_only_at_the_longest() -> None:
    """A packed sample's BOS after padding starts a patch only where the packed row marks it begun (the
    decoder adds ``begins`` to the starts): nothing online knows that a PAD run is over."""
    tokens = np.array([BOS, EOS, PAD, PAD, PAD, PAD, PAD, BOS], dtype=np.int64)
    assert np.flatnonzero(patch_starts(tokens, {}, longest=3)).tolist() == [0, 1, 2, 5]


def _random_stream(rng: np.random.Generator, length: int) -> np.ndarray:
    """Segments of known and unknown codecs, text-like bytes, and stray markers anywhere."""
    parts: list[int] = [BOS]
    while len(parts) < length:
        codec = rng.choice([b"text", b"pix w=3", b"other", b""])
        payload = rng.choice(list(b"ab ,\n  x.\xd0\xbc"), size=int(rng.integers(0, 30))).tolist()
        parts += [SEG, *codec, HDR, *payload, END]
        if rng.random() < 0.3:
            parts.insert(int(rng.integers(1, len(parts))), int(rng.choice([SEG, HDR, END, PAD, EOS, BOS])))
    return np.array(parts[:length], dtype=np.int64)


@pytest.mark.parametrize("seed", range(20))
def test_the_online_placer_places_what_the_whole_stream_places(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens = _random_stream(rng, 200)
    rules = {"text": WordStarts(longest=5), "pix": FixedLength(3)}
    offline = patch_starts(tokens, rules, longest=7)
    placer = PatchPlacer(rules, longest=7)
    online = [placer.push(int(t)) for t in tokens]
    assert online == offline.tolist()
    lengths = np.diff(np.flatnonzero(np.append(offline, True)))
    assert lengths.max() <= 7 and 0.15 < offline.mean() < 0.8  # not trivially all or none


def test_starts_of_a_prefix_are_the_prefix_of_the_starts() -> None:
    """Online: a boundary never depends on the tokens after it."""
    tokens = _random_stream(np.random.default_rng(7), 300)
    rules = {"text": WordStarts()}
    whole = patch_starts(tokens, rules, longest=6)
    for cut in (1, 2, 50, 137, 299):
        assert patch_starts(tokens[:cut], rules, longest=6).tolist() == whole[:cut].tolist()


def test_rules_round_trip_through_json_and_describe_themselves() -> None:
    for rule in (FixedLength(28), WordStarts(), WordStarts(longest=12)):
        assert rule_from_json(json.loads(json.dumps(rule_to_json(rule)))) == rule
    assert [describe(r) for r in (FixedLength(28), WordStarts(), WordStarts(12))] == [
        "fixed 28",
        "words",
        "words (cut at 12)",
    ]
    with pytest.raises(ValueError, match="not a boundary rule"):
        rule_from_json({"rule": "entropy"})
