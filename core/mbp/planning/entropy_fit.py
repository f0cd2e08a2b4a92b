"""The small byte model behind an entropy rule (``mbp.boundaries.EntropyStarts``), trained by the run
on its own training data before the first step: an order-2 byte n-gram whose next-byte distribution in a
two-byte context is smoothed toward the one-byte context's (and that toward the bytes' frequencies), as a
count-based stand-in for BLT's small entropy transformer. A patch starts where the model's entropy is
above a threshold (BLT's global rule); the threshold is set so the rule makes as many patches as the
word rule would of the same bytes, so the two rules spend the coarse stages alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mbp.boundaries import CONTEXTS, EntropyStarts, WordStarts, cut_long, payload_contexts, payload_starts

SMOOTHING = 4.0
"""Pseudo-counts a context's distribution draws from its shorter context's: a context seen a few times
is as uncertain as its last byte alone, one seen often as its own counts say."""
SEARCH_STEPS = 16
"""Halvings of the threshold's search: 16 place it within a 65,536th of the entropies' range."""
BLOCK = 4096
"""Contexts whose entropies are computed at once (a block of 256-way distributions in float64)."""


def fit_entropy_starts(payloads: Sequence[np.ndarray], longest: int) -> EntropyStarts:
    """The entropy rule for bytes like ``payloads`` (one codec's payloads, without markers): its
    threshold starts as many patches as ``WordStarts(longest)`` starts on them, long patches cut alike
    (to within ``1 / 2**SEARCH_STEPS`` of the bytes' entropies' range). ValueError for payloads with
    fewer than two bytes in all."""
    pieces = [np.asarray(p, dtype=np.int64).clip(0, 255) for p in payloads if len(p) > 1]
    if not pieces:
        raise ValueError("an entropy rule needs training bytes: the probed samples have no such payloads")
    entropy = context_entropy(pieces)
    words = sum(int(cut_long(payload_starts(piece, WordStarts(longest)), longest).sum()) for piece in pieces)
    count = _PatchCount(pieces, entropy, longest)
    low, high = float(entropy.min()) - 1.0, float(entropy.max())  # low starts every byte, high the fewest
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        if count.at(middle) > words:
            low = middle
        else:
            high = middle
    return EntropyStarts(np.packbits(entropy > high).tobytes(), longest)


class _PatchCount:
    """The patches an entropy rule makes of ``pieces`` at a threshold, as ``payload_starts`` and
    ``cut_long`` place them piece by piece: the pieces laid end to end, each byte's context entropy
    looked up once (a piece's first byte starts, so a cut never runs across pieces)."""

    def __init__(self, pieces: Sequence[np.ndarray], entropy: np.ndarray, longest: int) -> None:
        self.entropy = np.concatenate([entropy[payload_contexts(piece)] for piece in pieces])
        self.firsts = np.zeros(len(self.entropy), dtype=bool)
        self.firsts[np.cumsum([0] + [len(piece) for piece in pieces[:-1]])] = True
        self.longest = longest

    def at(self, threshold: float) -> int:
        return int(cut_long(self.firsts | (self.entropy > threshold), self.longest).sum())


def context_entropy(payloads: Sequence[np.ndarray]) -> np.ndarray:
    """(CONTEXTS,) float: the model's next-byte entropy, in bits, in each two-byte context (a context
    never seen takes its last byte's distribution)."""
    following = np.concatenate([p[1:] for p in payloads])
    contexts = np.concatenate([payload_contexts(p)[1:] for p in payloads])
    bytes_seen = np.bincount(following, minlength=256) + 1.0
    unigram = bytes_seen / bytes_seen.sum()
    pairs = np.bincount((contexts % 256) * 256 + following, minlength=256 * 256).reshape(256, 256)
    by_last = (pairs + SMOOTHING * unigram) / (pairs.sum(1, keepdims=True) + SMOOTHING)  # (last, next)
    entropy = np.repeat(_entropy(by_last)[None, :], 256, axis=0).reshape(CONTEXTS)
    keys, counts = np.unique(contexts * 256 + following, return_counts=True)
    seen = np.unique(keys // 256)
    for first in range(0, len(seen), BLOCK):
        block = seen[first : first + BLOCK]
        grid = np.zeros((len(block), 256))
        inside = np.isin(keys // 256, block)
        grid[np.searchsorted(block, keys[inside] // 256), keys[inside] % 256] = counts[inside]
        smoothed = (grid + SMOOTHING * by_last[block % 256]) / (grid.sum(1, keepdims=True) + SMOOTHING)
        entropy[block] = _entropy(smoothed)
    return entropy


def _entropy(distributions: np.ndarray) -> np.ndarray:
    """Entropy in bits of each row of ``distributions: (..., 256)`` (rows that sum to 1)."""
    return np.asarray(-(distributions * np.log2(distributions)).sum(-1))
