"""Encoded fields kept across epochs: a data set read many times is decoded once.

A codec's ``encode`` is a function of the field's bytes and the codec's params (the ``Codec``
contract), so the tokens of a field are kept by the digest of its bytes. The default demo reads its
3,000 samples four times; decoding them (PNG, WAV spectrograms) every epoch shares the 2 cores with
the training step, and the run trains at 0.84 of its bare bf16 step's speed instead of 0.96.
Training variations (``CodecTraits.augment``) are made afresh every time and never kept; thinned
training weights are drawn per sample after the tokens, so they still vary.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

import numpy as np

from mbp.protocol import encode_segment

if TYPE_CHECKING:
    from mbp.codec import Codec

FIELD_CACHE_BYTES = 256 << 20
"""Tokens kept at most (int16: 128 M tokens). A set whose encodings outgrow it keeps what fitted first
and encodes the rest every epoch: evicting would make a set read in order miss every time."""


class FieldCache:
    """Tokens of encoded fields, by field name and a digest of the field's bytes."""

    def __init__(self, budget: int = FIELD_CACHE_BYTES) -> None:
        self.budget = budget
        self.held = 0
        self.hits = 0
        self._tokens: dict[tuple[str, bytes], np.ndarray] = {}
        # the training stream encodes on its prefetch thread while evaluation encodes on the main one
        self._lock = threading.Lock()

    def tokens(self, field: str, data: bytes, codec: Codec) -> np.ndarray:
        """The tokens ``codec`` (``field``'s) makes of ``data``: kept ones, or new ones, kept while they
        fit. A field whose encoding fails is not kept: it fails, and is named, again every epoch."""
        key = (field, hashlib.blake2b(data, digest_size=16).digest())
        found = self._tokens.get(key)
        if found is not None:
            self.hits += 1
            return found
        tokens = encode_segment(codec.encode(data))
        with self._lock:
            if key not in self._tokens and self.held + tokens.nbytes <= self.budget:
                tokens.flags.writeable = False  # shared by every later sample with these bytes
                self._tokens[key] = tokens
                self.held += tokens.nbytes
        return tokens

    def forked(self) -> None:
        """Made usable in a forked process: the fields kept so far stay, the lock is new."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tokens)
