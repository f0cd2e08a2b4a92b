"""The byte-stream protocol: how a mixed-modality sample becomes one token stream, and back.

Tokens 0..255 are data bytes. Markers live above 255, so every byte value of a payload (128 and 255
included) stays data and nothing needs escaping. A sample is ``BOS segment... EOS``; a segment is
``SEG <ASCII header> HDR <payload bytes> END`` where the header is the codec name followed by
``k=v`` metadata, e.g. ``pixels w=64 h=48 mode=RGB``. Any stream decodes without knowing the pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mbp.errors import ProtocolError

PAD, BOS, EOS, SEG, HDR, END = 256, 257, 258, 259, 260, 261
VOCAB_SIZE = 262
MARKER_NAMES = {PAD: "PAD", BOS: "BOS", EOS: "EOS", SEG: "SEG", HDR: "HDR", END: "END"}
TOKEN_DTYPE = np.int16

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_VALUE = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII without spaces


@dataclass(frozen=True)
class Segment:
    """One field of a sample: the codec that made it, its metadata and its payload bytes."""

    codec: str
    payload: bytes
    meta: dict[str, str] = field(default_factory=dict)

    def header(self) -> bytes:
        if not _NAME.match(self.codec):
            raise ProtocolError(f"invalid codec name in header: {self.codec!r}")
        parts = [self.codec]
        for key, value in self.meta.items():
            value = str(value)
            if not _NAME.match(key) or "=" in key or not _VALUE.match(value):
                raise ProtocolError(f"codec '{self.codec}': metadata {key}={value!r} is not header-safe")
            parts.append(f"{key}={value}")
        return " ".join(parts).encode("ascii")


@dataclass(frozen=True)
class DecodedStream:
    """What a token stream holds. ``partial`` is a segment cut off before its END (e.g. by generation)."""

    segments: list[Segment]
    partial: Segment | None = None
    ended: bool = False
    """Whether EOS was reached."""
    broken: str | None = None
    """Why the stream stopped early (only from :func:`decode_lenient`): the grammar broke there."""


class _BreakError(ProtocolError):
    """A grammar break at token ``position``; everything before it decodes."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


def parse_header(raw: bytes) -> tuple[str, dict[str, str]]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"segment header is not ASCII: {raw[:40]!r}") from None
    name, *pairs = text.split(" ") if text else [""]
    if not _NAME.match(name):
        raise ProtocolError(f"segment header has no valid codec name: {text[:60]!r}")
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _NAME.match(key):
            raise ProtocolError(f"segment header item {pair!r} is not k=v (header {text[:60]!r})")
        meta[key] = value
    return name, meta


def encode_segment(segment: Segment) -> np.ndarray:
    header = segment.header()
    out = np.empty(len(header) + len(segment.payload) + 3, dtype=TOKEN_DTYPE)
    out[0] = SEG
    out[1 : 1 + len(header)] = np.frombuffer(header, dtype=np.uint8)
    out[1 + len(header)] = HDR
    out[2 + len(header) : -1] = np.frombuffer(segment.payload, dtype=np.uint8)
    out[-1] = END
    return out


def encode_sample(segments: Iterable[Segment]) -> np.ndarray:
    """``BOS segment... EOS`` as int16 token ids."""
    parts = [np.array([BOS], TOKEN_DTYPE)]
    parts += [encode_segment(s) for s in segments]
    parts.append(np.array([EOS], TOKEN_DTYPE))
    return np.concatenate(parts)


def prompt_stream(segments: Iterable[Segment], codec: str, start: bytes = b"") -> np.ndarray:
    """``BOS segment...`` and then a ``codec`` segment opened (``SEG header HDR``) and begun with
    ``start``: a prompt whose continuation is the rest of that segment's payload."""
    parts = [np.array([BOS], TOKEN_DTYPE)]
    parts += [encode_segment(s) for s in segments]
    parts.append(np.array([SEG, *Segment(codec, b"").header(), HDR], TOKEN_DTYPE))
    parts.append(np.frombuffer(start, dtype=np.uint8).astype(TOKEN_DTYPE))
    return np.concatenate(parts)


def decode_stream(tokens: Sequence[int] | np.ndarray) -> DecodedStream:
    """Cut a token stream back into segments.

    A stream that stops mid-segment returns the complete segments plus the cut one as ``partial``;
    that is never an error. A stream that breaks the grammar (a byte outside a segment, a marker inside
    a header, a token outside the vocabulary) raises :class:`ProtocolError` naming the position.
    Leading PAD tokens and everything after EOS are ignored.
    """
    array = _in_vocabulary(tokens)
    segments: list[Segment] = []
    pos = _body_start(array)
    n = array.size
    while pos < n:
        token = int(array[pos])
        if token == EOS:
            return DecodedStream(segments, None, ended=True)
        if token == PAD:
            pos += 1
            continue
        if token != SEG:
            raise _BreakError(f"expected SEG or EOS at position {pos}, got {_name(token)}", pos)
        header_end = _find_marker(array, pos + 1)
        if header_end is None:  # cut inside the header: the codec name itself may be cut short
            header = array[pos + 1 :].astype(np.uint8).tobytes().decode("latin-1")
            return DecodedStream(segments, Segment("", b"", {"header": header}))
        if int(array[header_end]) != HDR:
            raise _BreakError(
                f"segment at position {pos}: expected HDR, got {_name(int(array[header_end]))}", header_end
            )
        try:
            codec, meta = parse_header(array[pos + 1 : header_end].astype(np.uint8).tobytes())
        except ProtocolError as error:
            raise _BreakError(str(error), header_end) from None
        payload_end = _find_marker(array, header_end + 1)
        if payload_end is None:
            payload = array[header_end + 1 :].astype(np.uint8).tobytes()
            return DecodedStream(segments, Segment(codec, payload, meta))
        if int(array[payload_end]) != END:
            raise _BreakError(
                f"segment '{codec}' at position {pos}: expected END, got {_name(int(array[payload_end]))}",
                payload_end,
            )
        segments.append(Segment(codec, array[header_end + 1 : payload_end].astype(np.uint8).tobytes(), meta))
        pos = payload_end + 1
    return DecodedStream(segments, None)


def _in_vocabulary(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """``tokens`` as a flat int64 array; a token outside the vocabulary breaks the grammar."""
    array = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= VOCAB_SIZE):
        bad = int(np.flatnonzero((array < 0) | (array >= VOCAB_SIZE))[0])
        raise _BreakError(f"token {int(array[bad])} at position {bad} is outside the vocabulary", bad)
    return array


def _body_start(array: np.ndarray) -> int:
    """Where a stream's segments begin: after its leading PAD tokens and its BOS, if any."""
    start = 0
    while start < array.size and array[start] == PAD:
        start += 1
    if start < array.size and array[start] == BOS:
        start += 1
    return start


def decode_lenient(tokens: Sequence[int] | np.ndarray) -> DecodedStream:
    """Like :func:`decode_stream`, but a grammar break ends the stream where it happens instead of
    raising: the complete segments before it, the segment it cut as ``partial``, and ``broken`` saying
    what broke. For generated streams, whose every byte is worth keeping."""
    array = np.asarray(tokens, dtype=np.int64).reshape(-1)
    try:
        return decode_stream(array)
    except _BreakError as error:
        head = decode_stream(array[: error.position])
        return DecodedStream(head.segments, head.partial, head.ended, broken=str(error))


def _find_marker(array: np.ndarray, start: int) -> int | None:
    hits = np.flatnonzero(array[start:] > 255)
    return start + int(hits[0]) if hits.size else None


def _name(token: int) -> str:
    return MARKER_NAMES.get(token, f"byte {token}")


def token_text(tokens: Sequence[int] | np.ndarray) -> str:
    """Tokens in words, for a reader: printable ASCII as itself, other bytes as ``\\xNN``, markers by
    name in angle brackets (``<BOS>``)."""
    return "".join(
        f"<{MARKER_NAMES[t]}>" if t in MARKER_NAMES else chr(t) if 32 <= t < 127 else f"\\x{t:02x}"
        for t in map(int, tokens)
    )
