"""The training data as planning sees it, read once per run: its first samples, their encoded lengths,
the first rows as training packs them, and the set's size, counted only as far as a planner asks.

Every planner (patch, rows, precision, steps, variation) and every recount of a planned run's steps
(``mbp.planning.deadline``) asks this one object, so a run reads its shards for planning once: the
samples read are counted as they pass, and a later count goes on from where the last one stopped.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from mbp.config import settled_batch_size, settled_seq_len
from mbp.data.batches import Batch, Position, batches
from mbp.data.encode import SampleEncoder
from mbp.data.read import RawSample, read_samples
from mbp.data.skips import SkipLog
from mbp.resolve import Resolved
from mbp.sample import EncodedSample

LENGTH_SAMPLES = 512
"""Samples encoded from the start of the (shuffled) training stream to measure their lengths."""
PROBE_ROWS = 64
"""Rows packed from the stream's first samples to measure how many samples a step holds, and timed."""


@dataclass
class Counter:
    """Samples of a shard list counted as far as asked, the reading kept open to go on from there."""

    shards: list[str]
    counted: int = 0
    ended: bool = False
    reading: Iterator[RawSample] | None = None

    def count(self, most: int | None) -> int:
        """Samples in the set, counted up to ``most`` (None: all of them)."""
        if self.reading is None and not self.ended:
            self.reading = read_samples(self.shards, SkipLog(quiet=True))
        while not self.ended and (most is None or self.counted < most):
            sample = next(self.reading, None) if self.reading is not None else None
            if sample is None:
                self.ended, self.reading = True, None
                break
            self.counted += 1
        return self.counted if most is None else min(self.counted, most)


@dataclass
class Reading:
    """The time spent drawing encoded samples from a training stream (reading, shuffling, decoding,
    encoding), and what they held: the data path's rate on this machine, from samples the plan reads
    anyway."""

    seconds: float = 0.0
    samples: int = 0
    tokens: int = 0

    def timed(
        self, stream: Iterator[tuple[EncodedSample, Position]]
    ) -> Iterator[tuple[EncodedSample, Position]]:
        """``stream``, each draw timed and counted here."""
        while True:
            began = time.perf_counter()
            read = next(stream, None)
            self.seconds += time.perf_counter() - began
            if read is None:
                return
            self.samples += 1
            self.tokens += len(read[0].tokens)
            yield read


class Probe:
    """One run's look at its data before (and while) it trains, each part read at most once."""

    def __init__(self, shards: list[str], eval_shards: list[str] | None = None) -> None:
        self.shards = shards
        self.training = Counter(shards)
        self.held_out = Counter(eval_shards or [])
        self.has_held_out = bool(eval_shards)
        self.encoded: Encoded | None = None
        self._packed: dict[tuple[SampleEncoder, int, int, int, bool], list[Batch]] = {}
        """Batches packed, by the encoder and the rows they were packed for."""
        self.readings = {False: Reading(), True: Reading()}
        """The training stream's readings, unvaried (False) and varied as training varies it (True)."""

    def count(self, most: int | None) -> int:
        """Training samples, counted up to ``most``."""
        return self.training.count(most)

    def held_out_count(self, most: int | None) -> int:
        """Held-out samples, counted up to ``most`` (None: all)."""
        return self.held_out.count(most)

    def samples(self, resolved: Resolved, count: int) -> list[EncodedSample]:
        """The training stream's first ``count`` samples, whole, as training shuffles them (unvaried)."""
        return [sample for sample, _ in itertools.islice(self._encoded(resolved).samples(), count)]

    def lengths(self, resolved: Resolved) -> list[int]:
        """Encoded lengths of the training stream's first ``LENGTH_SAMPLES`` samples."""
        samples = itertools.islice(self._encoded(resolved).samples(), LENGTH_SAMPLES)
        return [len(sample.tokens) for sample, _ in samples]

    def batches(self, resolved: Resolved, align: int, augment: bool) -> list[Batch]:
        """The training stream's first ``PROBE_ROWS`` rows, in batches as training packs them; ``augment``:
        varied and weighted as training's are (a ``ThinningHead`` thins them)."""
        data = resolved.pipeline.data
        seq_len = settled_seq_len(data)
        key = (resolved.encoder, seq_len, settled_batch_size(data), align, augment)
        if key not in self._packed:
            if augment:
                stream = self.readings[True].timed(
                    training_order(resolved, self.shards, seq_len, augment=True)
                )
            else:  # the samples the lengths were measured on, those too long for a row skipped
                stream = self._encoded(resolved).samples(longest=seq_len)
            self._packed[key] = list(_packed(resolved, stream, align))
        return self._packed[key]

    def _encoded(self, resolved: Resolved) -> Encoded:
        """The training stream's samples as encoded for ``resolved`` (unvaried), kept as they are read."""
        if self.encoded is None or self.encoded.encoder is not resolved.encoder:
            stream = training_order(resolved, self.shards, sys.maxsize)  # nothing is too long to measure
            stream = self.readings[False].timed(stream)
            self.encoded = Encoded(resolved.encoder, stream, resolved.split)
        return self.encoded

    def reading(self) -> tuple[Reading, bool] | None:
        """The training stream's reading so far and whether its samples were varied as training's are:
        the varied one where planning read it, else the unvaried one; None where none was read."""
        for augmented in (True, False):
            if self.readings[augmented].samples and self.readings[augmented].seconds > 0:
                return self.readings[augmented], augmented
        return None

    def timing_batches(self, resolved: Resolved, align: int) -> list[Batch]:
        """The batches a step is timed on: weighted as training weights them (thinned where the head
        thins), else the plain ones."""
        return self.batches(resolved, align, augment=resolved.encoder.thinning is not None)

    def per_step(self, resolved: Resolved, align: int) -> float:
        """Samples in one step's rows (all processes and accumulated batches together), as the training
        stream packs its first samples (unvaried, unthinned)."""
        probed = self.batches(resolved, align, augment=False)
        rows = sum(len(batch.rows) for batch in probed)
        samples = sum(batch.samples_started for batch in probed)
        per_row = samples / rows if rows else 1.0
        return per_row * settled_batch_size(resolved.pipeline.data) * resolved.pipeline.train.grad_accum


@dataclass
class Encoded:
    """One reading of the training stream (unvaried), its samples kept as they are encoded, so that the
    row lengths and the packed rows are measured on the same samples, read once."""

    encoder: SampleEncoder
    stream: Iterator[tuple[EncodedSample, Position]]
    split: bool
    """The head trains on pieces of samples: none is too long for a row."""
    kept: list[tuple[EncodedSample, Position]] = field(default_factory=list)

    def samples(self, longest: int | None = None) -> Iterator[tuple[EncodedSample, Position]]:
        """The stream from its start, read further as asked; ``longest``: samples over it skipped, as a
        stream of rows that long skips them (a head that splits samples keeps them)."""
        index = 0
        while True:
            if index == len(self.kept):
                read = next(self.stream, None)
                if read is None:
                    return
                self.kept.append(read)
            sample, position = self.kept[index]
            index += 1
            if longest is None or self.split or len(sample.tokens) <= longest:
                yield sample, position


def _packed(
    resolved: Resolved, stream: Iterator[tuple[EncodedSample, Position]], align: int
) -> Iterator[Batch]:
    data = resolved.pipeline.data
    rows = settled_batch_size(data)
    packed = batches(stream, rows, settled_seq_len(data), pack=data.pack, align=align, split=resolved.split)
    for batch, _ in itertools.islice(packed, math.ceil(PROBE_ROWS / rows)):
        yield batch


def training_order(
    resolved: Resolved, shards: list[str], seq_len: int, augment: bool = False
) -> Iterator[tuple[EncodedSample, Position]]:
    """One pass of the training stream's first epoch, shuffled as training shuffles it: shards written
    one kind of sample at a time would otherwise start unrepresentative. ``augment``: samples varied and
    weighted as training's are."""
    stream = resolved.stream(training=True, repeat=False, augment=augment, seq_len=seq_len)
    return stream.samples(shards, SkipLog(quiet=True))
