"""An encoded sample: the token sequence of one raw sample, the span of each field's segment in it, and
the loss weight of each token. Encoders make these (``mbp.data.encode``); heads, batching and evaluation
read them, so they live apart from both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mbp.protocol import HDR


@dataclass(frozen=True)
class Span:
    """Tokens ``start:end`` (SEG to END inclusive) hold the segment of ``field`` made by ``codec``."""

    field: str
    codec: str
    start: int
    end: int
    context_weight: float | None = None
    """The codec's weight for these tokens as an answer's context (``CodecTraits.context_weight``)."""


@dataclass
class EncodedSample:
    shard: str
    key: str
    tokens: np.ndarray
    spans: list[Span]
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    first: int = 0
    """Where ``tokens`` start in the whole sample: non-zero for a piece cut off a longer sample."""

    @property
    def where(self) -> str:
        return f"{Path(self.shard).name}:sample {self.key}"

    def span(self, field_name: str) -> Span:
        return next(s for s in self.spans if s.field == field_name)

    def piece(self, start: int, end: int | None = None) -> EncodedSample:
        """Tokens ``start:end`` of this sample as a sample of their own, spans cut to fit."""
        end = len(self.tokens) if end is None else min(end, len(self.tokens))
        spans = [
            Span(s.field, s.codec, max(s.start, start) - start, min(s.end, end) - start)
            for s in self.spans
            if s.start < end and s.end > start
        ]
        weights = self.weights[start:end] if len(self.weights) else self.weights
        return EncodedSample(self.shard, self.key, self.tokens[start:end], spans, weights, self.first + start)


def payload_range(sample: EncodedSample, span: Span) -> tuple[int, int]:
    """Token indices ``[first, last)`` of a segment's payload plus its END marker."""
    window = sample.tokens[span.start : span.end]
    hdr = span.start + int(np.flatnonzero(window == HDR)[0])
    return hdr + 1, span.end


def payload_bytes(sample: EncodedSample, field: str) -> bytes:
    """The payload of ``field``'s segment as it stands in the sample (its END marker left out)."""
    first, last = payload_range(sample, sample.span(field))
    return sample.tokens[first : last - 1].astype(np.uint8).tobytes()


def prompt_length(sample: EncodedSample, field: str) -> int:
    """Tokens up to and including the HDR of ``field``: what a generator is given."""
    return payload_range(sample, sample.span(field))[0]
