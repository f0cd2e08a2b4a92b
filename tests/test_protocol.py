"""Issue 3: the byte-stream protocol."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mbp.errors import ProtocolError
from mbp.protocol import (
    BOS,
    END,
    EOS,
    HDR,
    PAD,
    SEG,
    VOCAB_SIZE,
    Segment,
    decode_stream,
    encode_sample,
    encode_segment,
    parse_header,
    prompt_stream,
)

segments = st.lists(
    st.builds(
        Segment,
        codec=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        payload=st.binary(max_size=300),
        meta=st.dictionaries(
            st.from_regex(r"[a-z]{1,5}", fullmatch=True),
            st.from_regex(r"[!-~]{0,6}", fullmatch=True),
            max_size=3,
        ),
    ),
    max_size=4,
)


def test_markers_sit_above_every_byte() -> None:
    assert min(PAD, BOS, EOS, SEG, HDR, END) == 256 and VOCAB_SIZE == 262


def test_every_byte_value_survives() -> None:
    payload = bytes(range(256)) * 2
    stream = encode_sample([Segment("pixels", payload, {"w": "32", "h": "16", "mode": "L"})])
    assert stream[0] == BOS and stream[-1] == EOS
    decoded = decode_stream(stream)
    assert decoded.segments == [Segment("pixels", payload, {"w": "32", "h": "16", "mode": "L"})]
    assert decoded.ended and decoded.partial is None


def test_layout_is_seg_header_hdr_payload_end() -> None:
    stream = encode_sample([Segment("wav", b"\x80\xff", {"rate": "8000"})]).tolist()
    assert stream == [BOS, SEG, *b"wav rate=8000", HDR, 0x80, 0xFF, END, EOS]


@given(segments)
@settings(max_examples=200, deadline=None)
def test_round_trip(values: list[Segment]) -> None:
    decoded = decode_stream(encode_sample(values))
    assert decoded.segments == values and decoded.ended


@given(segments, st.integers(min_value=0, max_value=2000))
@settings(max_examples=200, deadline=None)
def test_truncated_stream_gives_complete_segments_plus_flagged_partial(
    values: list[Segment], cut: int
) -> None:
    stream = encode_sample(values)
    cut = min(cut, len(stream) - 1)
    decoded = decode_stream(stream[:cut])
    assert not decoded.ended
    complete = decoded.segments
    assert complete == values[: len(complete)]
    if decoded.partial is not None and decoded.partial.codec:
        original = values[len(complete)]
        assert original.codec == decoded.partial.codec
        assert original.payload.startswith(decoded.partial.payload)


@given(st.lists(st.integers(min_value=-3, max_value=VOCAB_SIZE + 3), max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_streams_raise_only_protocol_errors(tokens: list[int]) -> None:
    with contextlib.suppress(ProtocolError):
        decode_stream(np.array(tokens, dtype=np.int64))


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([BOS, 65, EOS], "expected SEG or EOS at position 1, got byte 65"),
        ([BOS, SEG, *b"t", END], "expected HDR, got END"),
        ([BOS, SEG, *b"t", HDR, 1, HDR], "expected END, got HDR"),
        ([BOS, 999], "token 999 at position 1 is outside the vocabulary"),
        ([BOS, SEG, 0xE9, HDR, END], "segment header is not ASCII"),
    ],
)
def test_malformed_streams_name_the_position(tokens: list[int], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_stream(tokens)


def test_stream_cut_inside_a_header_has_no_codec() -> None:
    stream = encode_sample([Segment("text", b"hi"), Segment("pixels", b"\x00", {"w": "1"})])
    cut = stream[: 1 + 1 + 4 + 1 + 2 + 1 + 1 + 3]  # BOS, the text segment, SEG and "pix"
    decoded = decode_stream(cut)
    assert decoded.segments == [Segment("text", b"hi")]
    assert decoded.partial == Segment("", b"", {"header": "pix"})


def test_header_metadata_must_be_header_safe() -> None:
    with pytest.raises(ProtocolError, match="not header-safe"):
        encode_sample([Segment("text", b"", {"note": "two words"})])
    assert parse_header(b"pixels w=3 h=4 mode=RGB") == ("pixels", {"w": "3", "h": "4", "mode": "RGB"})


def test_prompt_stream_opens_a_segment_for_the_generator_to_continue() -> None:
    context = Segment("text", b"what colour?", {"lang": "en"})
    stream = prompt_stream([context], "text", b"re")
    expected = [BOS, *encode_segment(context).tolist(), SEG, *b"text", HDR, *b"re"]
    assert stream.tolist() == expected
    decoded = decode_stream([*stream.tolist(), *b"d", END, EOS])
    assert decoded.segments == [context, Segment("text", b"red")] and decoded.ended
