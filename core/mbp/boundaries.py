"""Where byte-level patches start: declarative boundary rules, and the patch starts of a token stream.

Every rule is online: whether token ``i`` starts a patch follows from tokens ``<= i`` alone, so generation
places boundaries as each token arrives exactly where training saw them (``PatchPlacer``). That is as
causal as deciding before token ``i``: token ``i`` is predicted from the state after token ``i - 1``, in
the patch before (``mbp.model.varying_patches``), and only what follows sees where a patch starts.

The stream's own structure places boundaries too: after every marker but ``SEG`` and ``PAD`` a patch
starts, so ``BOS`` is a patch of its own, ``SEG header HDR`` opens one (cut where it is long), a payload's
``END`` closes its last one, and ``EOS`` stands alone. A payload of fixed patches (rows, frames) starts a
patch of its own, so its rows align to its first byte; a text payload's first word shares its header's
patch (``header_leads``). Inside a payload the rule of its codec (named by the segment header) places
them; a codec without a rule gets fixed patches of the longest length. Nowhere does a patch grow past
``longest``: a longer run is cut every ``longest`` tokens.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mbp.protocol import HDR, PAD, SEG


@dataclass(frozen=True)
class FixedLength:
    """Patches of ``length`` payload bytes, counted from the payload's first byte: one image row, one
    spectrogram frame, or a fixed length for bytes without structure (raw PCM, file bytes)."""

    length: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"a fixed patch length must be at least 1, got {self.length}")


@dataclass(frozen=True)
class WordStarts:
    """A patch starts at the first byte of a word, the first byte that is no space, newline or punctuation
    (``DELIMITERS``) after one that is: a word keeps the run of delimiters that ends it (``, ``, a line
    break and the next line's indentation), as SpaceByte's patches keep the space after a word. Words
    longer than ``longest`` (None: the model's longest patch) are cut every ``longest`` bytes.

    Starting the patch after a delimiter run's first byte instead (SpaceByte's rule, decided before the
    word's first byte is seen) makes the run lead the next word: on code, an indentation of 12 spaces
    and ``return `` fill a 16-byte patch and cut the keyword."""

    longest: int | None = None

    def __post_init__(self) -> None:
        if self.longest is not None and self.longest < 1:
            raise ValueError(f"a word's longest patch must be at least 1, got {self.longest}")


@dataclass(frozen=True)
class EntropyStarts:
    """A patch starts at a byte a small byte model finds hard to predict, as BLT places its patches:
    the model is an order-2 byte n-gram trained on the run's training data
    (``mbp.planning.entropy_fit``), and ``uncertain`` marks the two-byte contexts whose next-byte
    entropy is above the run's threshold (a bitset over the 65,536 contexts ``payload_contexts``
    numbers, 8,192 bytes). Patches longer than ``longest`` (None: the model's longest patch) are cut."""

    uncertain: bytes
    longest: int | None = None

    def __post_init__(self) -> None:
        if len(self.uncertain) != CONTEXTS // 8:
            raise ValueError(
                f"an entropy rule marks {CONTEXTS} contexts in {CONTEXTS // 8} bytes, "
                f"got {len(self.uncertain)}"
            )
        if self.longest is not None and self.longest < 1:
            raise ValueError(f"an entropy rule's longest patch must be at least 1, got {self.longest}")

    @cached_property
    def marks(self) -> np.ndarray:
        """(CONTEXTS,) bool: ``uncertain`` unpacked."""
        return np.unpackbits(np.frombuffer(self.uncertain, dtype=np.uint8)).astype(bool)


BoundaryRule = FixedLength | WordStarts | EntropyStarts

CONTEXTS = 256 * 256
"""The contexts of an ``EntropyStarts`` model: the two payload bytes before a byte."""

DELIMITERS = frozenset((string.whitespace + string.punctuation).encode("ascii"))
"""ASCII whitespace and punctuation: the bytes after which ``WordStarts`` begins a patch. Bytes of
multi-byte UTF-8 characters are never delimiters, so a word in any script stays whole."""

_IS_DELIMITER = np.zeros(PAD + 1, dtype=bool)
_IS_DELIMITER[list(DELIMITERS)] = True

_NO_START_AFTER = (SEG, PAD)
"""Markers after which no patch starts: ``SEG`` opens a header patch, and a ``PAD`` run is filler that
only the longest cut splits (a patch of every padding token would be pure waste)."""


def rule_longest(rule: BoundaryRule, longest: int) -> int:
    """The longest patch ``rule`` allows inside a model whose longest patch is ``longest``."""
    if not isinstance(rule, FixedLength) and rule.longest is not None:
        return min(rule.longest, longest)
    return longest


def header_leads(rule: BoundaryRule) -> bool:
    """Whether a payload under ``rule`` continues its header's patch instead of starting its own: yes
    for text (words, entropy), whose first word is then predicted with the header in view, inside one
    patch, as fixed patches see it. A short field (an answer, a label) is then one patch with its
    header. As a patch of its own, its second byte would be predicted from a patch's first position,
    which sees its own byte, the start token and the coarse stage: on spoken digits that position costs
    0.04-0.08 bits at the answer's second byte, against 0.003-0.014 under fixed patches and 0.003-0.011
    with the header leading (``BENCHMARKS.md``). Rows and frames start their own patch, to stay aligned."""
    return not isinstance(rule, FixedLength)


def payload_starts(payload: np.ndarray, rule: BoundaryRule) -> np.ndarray:
    """(N,) bool: the bytes of ``payload: (N,)`` where ``rule`` starts a patch (before any longest cut);
    the first byte always."""
    index = np.arange(len(payload))
    if isinstance(rule, FixedLength):
        return np.asarray(index % rule.length == 0)
    if isinstance(rule, EntropyStarts):
        return np.asarray((index == 0) | rule.marks[payload_contexts(payload)])
    values = np.asarray(payload, dtype=np.int64)
    delimiter = _IS_DELIMITER[values.clip(0, PAD)]  # a marker is none: after a delimiter, END starts
    after = np.concatenate(([False], delimiter[:-1]))  # the byte before is a delimiter
    return np.asarray((index == 0) | (after & ~delimiter))


def payload_contexts(payload: np.ndarray) -> np.ndarray:
    """(N,) int: each byte's context for an ``EntropyStarts`` model, the two payload bytes before it as
    ``256 * second-last + last`` (0 where the payload has no such byte). The last position may be the
    marker that ends the payload: its context is still the bytes before it."""
    values = np.asarray(payload, dtype=np.int64).clip(0, 255)
    last = np.concatenate(([0], values[:-1]))
    second_last = np.concatenate(([0, 0], values[:-2]))[: len(values)]
    return np.asarray(second_last * 256 + last)


def cut_long(starts: np.ndarray, longest: np.ndarray | int) -> np.ndarray:
    """``starts: (N,)`` with a start added wherever ``longest`` tokens have passed since the last one
    (``longest`` per position, or one number); position 0 always starts."""
    starts = starts.copy()
    if len(starts) == 0:
        return starts
    starts[0] = True
    index = np.arange(len(starts))
    last = np.maximum.accumulate(np.where(starts, index, 0))
    return np.asarray(starts | ((index - last) % np.asarray(longest) == 0))


def patch_starts(
    tokens: np.ndarray, rules: Mapping[str, BoundaryRule], longest: int, lead: str | None = None
) -> np.ndarray:
    """(L,) bool: where the patches of ``tokens: (L,)`` start, each payload by the rule ``rules`` names
    for its codec (fixed ``longest`` patches for a codec not named), no patch longer than ``longest``.

    The same starts ``PatchPlacer`` places one token at a time. ``tokens`` is a whole sample, a row of
    them, or the start of one (a prompt); a piece cut from the middle of a sample takes its starts from
    the whole sample's, cut alike. ``lead``: the codec of a payload ``tokens`` begins inside of (the
    rest of a sample split across rows), whose header lies in an earlier row."""
    tokens = np.asarray(tokens, dtype=np.int64)
    length = len(tokens)
    if length == 0:
        return np.zeros(0, dtype=bool)
    previous = np.concatenate(([SEG], tokens[:-1]))
    starts = (previous >= PAD) & ~np.isin(previous, _NO_START_AFTER)
    limit = np.full(length, longest, dtype=np.int64)
    payloads = _payloads(tokens)
    if lead is not None and tokens[0] < PAD:  # the row begins inside a payload: the rest of one
        markers = np.flatnonzero(tokens >= PAD)
        payloads.insert(0, (0, int(markers[0]) + 1 if len(markers) else length, lead))
    for first, stop, codec in payloads:
        fixed = FixedLength(longest)
        rule = fixed if codec is None else rules.get(codec, fixed)
        starts[first:stop] |= payload_starts(tokens[first:stop], rule)
        if 0 < first < stop and header_leads(rule):  # the payload's first byte follows its HDR
            starts[first] = False
        limit[first:stop] = rule_longest(rule, longest)
    return cut_long(starts, _limits_by_patch(starts, limit))


def _limits_by_patch(starts: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """The longest cut in force at each position: the limit where a rule last started a patch (a patch
    a cut starts keeps the limit of the one it was cut from)."""
    index = np.arange(len(starts))
    starts = starts.copy()
    starts[0] = True
    return np.asarray(limit[np.maximum.accumulate(np.where(starts, index, 0))])


def _payloads(tokens: np.ndarray) -> list[tuple[int, int, str | None]]:
    """``(first, stop, codec)`` of every payload in ``tokens``: the positions ``first:stop`` its rule
    places, from the byte after ``HDR`` to the marker that ends it (included: the rule says whether that
    marker starts a patch), and the codec its header names (None when the ``HDR`` follows no ``SEG``
    header)."""
    markers = np.flatnonzero(tokens >= PAD)
    found: list[tuple[int, int, str | None]] = []
    for place, hdr in enumerate(markers.tolist()):
        if tokens[hdr] != HDR:
            continue
        opened = place > 0 and tokens[markers[place - 1]] == SEG
        codec = header_codec(tokens[markers[place - 1] + 1 : hdr]) if opened else None
        stop = int(markers[place + 1]) + 1 if place + 1 < len(markers) else len(tokens)
        found.append((hdr + 1, stop, codec))
    return found


def codec_payloads(tokens: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(codec, payload bytes)`` of every payload of a sample's ``tokens`` whose header names a codec."""
    tokens = np.asarray(tokens, dtype=np.int64)
    found = [(codec, tokens[first:stop]) for first, stop, codec in _payloads(tokens) if codec is not None]
    return [(codec, payload[payload < PAD]) for codec, payload in found]


def header_codec(header: np.ndarray | list[int]) -> str:
    """The codec a segment header names: its text up to the first space."""
    return bytes(int(t) for t in header).split(b" ", 1)[0].decode("ascii", errors="replace")


class PatchPlacer:
    """``patch_starts`` one token at a time, for generation: as each token arrives it says whether that
    token starts a patch. One placer follows one row; ``reset`` starts it over for a new sequence."""

    def __init__(self, rules: Mapping[str, BoundaryRule], longest: int) -> None:
        self.rules = dict(rules)
        self.longest = longest
        self.reset()

    def reset(self) -> None:
        self._pending = True  # a start decided before the next token arrives (the first token starts)
        self._limit = self.longest  # the longest cut of the current patch
        self._count = 0  # tokens of the current patch consumed
        self._header: list[int] | None = None  # a SEG header being read
        self._rule: BoundaryRule | None = None  # the payload rule in force, None outside a payload
        self._index = 0  # payload bytes consumed
        self._previous = False  # whether the last payload byte is a delimiter
        self._context = 0  # the last two payload bytes, as payload_contexts numbers them

    def push(self, token: int) -> bool:
        """Consume ``token``; return whether it starts a patch."""
        ruled = self._pending or (
            isinstance(self._rule, WordStarts) and self._previous and token not in DELIMITERS
        )
        starts = ruled or self._count == self._limit
        if ruled:  # a patch a cut starts keeps the limit of the one it was cut from
            self._limit = self.longest if self._rule is None else rule_longest(self._rule, self.longest)
        self._count = 1 if starts else self._count + 1
        self._pending = self._advance(token)
        return starts

    def _advance(self, token: int) -> bool:
        """Follow the stream's grammar through ``token``; whether a rule starts the next token's patch
        before it arrives (after a marker, by a fixed length or by the entropy model)."""
        if token >= PAD:
            opened = self._header
            self._header = [] if token == SEG else None
            self._rule = None
            if token == HDR:
                codec = header_codec(opened) if opened is not None else None
                fixed = FixedLength(self.longest)
                self._rule = fixed if codec is None else self.rules.get(codec, fixed)
                self._index, self._previous, self._context = 0, False, 0
                return not header_leads(self._rule)
            return token not in _NO_START_AFTER
        if self._header is not None:
            self._header.append(token)
        if self._rule is None:
            return False
        self._index += 1
        self._context = (self._context % 256) * 256 + token
        if isinstance(self._rule, FixedLength):
            start = self._index % self._rule.length == 0
        elif isinstance(self._rule, EntropyStarts):
            start = bool(self._rule.marks[self._context])
        else:
            start = False  # a word starts at its own first byte (``push``)
        self._previous = token in DELIMITERS
        return start


def describe(rule: BoundaryRule) -> str:
    """``rule`` in a few words, for a run's first line: ``fixed 28``, ``words``, ``words (cut at 12)``."""
    if isinstance(rule, FixedLength):
        return f"fixed {rule.length}"
    if isinstance(rule, EntropyStarts):
        return "entropy" if rule.longest is None else f"entropy (cut at {rule.longest})"
    return "words" if rule.longest is None else f"words (cut at {rule.longest})"
