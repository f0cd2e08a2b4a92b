"""Encoded samples -> fixed-length padded batches, and the stream that makes them."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from mbp.data.encode import SampleEncoder
from mbp.data.ranks import deal, epoch_order, shard_weights, splits_shards, warn_unsplit
from mbp.data.read import RawSample, ShardCache, read_samples
from mbp.data.skips import SkipLog
from mbp.data.workers import encode_in_order
from mbp.errors import DataError, skip_kind
from mbp.protocol import PAD
from mbp.sample import EncodedSample

T = TypeVar("T")


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, L) int64, PAD-padded
    weights: torch.Tensor  # (B, L) float32, 0 on PAD
    begins: torch.Tensor
    """(B, L) bool: where each sample starts. The model keeps packed samples apart by it."""
    rows: list[list[EncodedSample]]
    """The samples laid one after another in each row."""
    starts: list[list[int]]
    """Where each sample of each row starts."""

    @property
    def samples(self) -> list[EncodedSample]:
        return [sample for row in self.rows for sample in row]

    @property
    def samples_started(self) -> int:
        """Samples whose first token is in this batch: a sample cut across rows counts once."""
        return sum(sample.first == 0 for sample in self.samples)

    @property
    def num_tokens(self) -> int:
        return int((self.tokens != PAD).sum())


def aligned(length: int, align: int) -> int:
    """``length`` rounded up to a multiple of ``align``."""
    return -(-length // align) * align


def collate(rows: list[list[EncodedSample]], seq_len: int, align: int = 1) -> Batch:
    """Rows of samples laid one after another, each starting at a multiple of ``align`` tokens."""
    tokens = np.full((len(rows), seq_len), PAD, dtype=np.int64)
    weights = np.zeros((len(rows), seq_len), dtype=np.float32)
    begins = np.zeros((len(rows), seq_len), dtype=np.bool_)
    starts: list[list[int]] = []
    for index, row in enumerate(rows):
        offset = 0
        starts.append([])
        for sample in row:
            end = offset + len(sample.tokens)
            tokens[index, offset:end] = sample.tokens
            weights[index, offset:end] = sample.weights
            begins[index, offset] = True
            starts[-1].append(offset)
            offset = aligned(end, align)
    return Batch(torch.from_numpy(tokens), torch.from_numpy(weights), torch.from_numpy(begins), rows, starts)


@dataclass
class Position:
    """Where a stream stands: the epoch, how many raw samples of it were consumed, and how many tokens
    of the next one (a sample cut across rows, see ``batches``) were already trained."""

    epoch: int = 0
    consumed: int = 0
    taken: int = 0


def encoded_stream(
    shards: list[str],
    encoder: SampleEncoder,
    seq_len: int,
    log: SkipLog,
    *,
    seed: int = 0,
    shuffle_buffer: int = 0,
    start: Position | None = None,
    repeat: bool = True,
    rank: int = 0,
    world: int = 1,
    augment: bool = False,
    split: bool = False,
    picked: Callable[[int], bool] | None = None,
    workers: int = 0,
) -> Generator[tuple[EncodedSample, Position], None, None]:
    """Encoded samples in a deterministic order (given the seed and the world size), with the position
    after each.

    Resuming from a position replays the same order and skips what was already consumed, so a
    resumed run sees exactly the samples an uninterrupted one would. With ``world`` processes and at
    least as many shards, each reads whole shards of its own (:mod:`mbp.data.ranks`) and its position
    counts its own stream; with fewer, sample ``i`` of the stream goes to rank ``i % world``.
    ``augment``: training samples, varied by codecs that can, with a generator seeded by (seed, epoch,
    index) so that the variations replay on resume too. ``split``: samples longer than ``seq_len`` are
    kept (``batches`` cuts them across rows), and a start inside a sample yields the rest of it first.
    ``picked``: only the samples whose index (from 0, in the stream's order) it picks are encoded and
    yielded (an evaluation's subset, ``spread``). ``workers``: processes that encode
    (:mod:`mbp.data.workers`); the samples are the same with any number.
    """
    taken = start.taken if start else 0
    yielded_any = False
    jobs = _jobs(shards, log, seed, shuffle_buffer, start, repeat, rank, world, augment, picked)
    for (position, read_whole), outcome in encode_in_order(jobs, encoder, workers):
        if outcome is None:  # an epoch's end
            if not yielded_any and read_whole is not None:
                raise _none_usable(read_whole, len(shards), log, seq_len, rank, world)
            yielded_any = False
            continue
        if isinstance(outcome, DataError):
            log.sample(str(outcome), skip_kind(outcome))
            continue
        log.encoded(len(outcome.tokens))
        sample = outcome.piece(taken) if taken else outcome  # a resumed stream's: its untrained rest
        taken = 0
        if _fits(sample, seq_len, split, log):
            yielded_any = True
            yield sample, position


def _fits(sample: EncodedSample, seq_len: int, split: bool, log: SkipLog) -> bool:
    """Whether ``sample`` may go into rows of ``seq_len`` tokens (``split`` cuts a longer one); a
    sample that may not is logged as skipped."""
    if len(sample.tokens) > seq_len and not split:
        log.sample(f"{sample.where}: {len(sample.tokens)} tokens, over data.seq_len {seq_len}", "too long")
        return False
    return True


def _jobs(
    shards: list[str],
    log: SkipLog,
    seed: int,
    shuffle_buffer: int,
    start: Position | None,
    repeat: bool,
    rank: int,
    world: int,
    augment: bool,
    picked: Callable[[int], bool] | None,
) -> Iterator[tuple[tuple[Position, list[str] | None], RawSample | None, tuple[int, ...] | None]]:
    """The samples this process encodes, each with its position and its variation's seed; after each
    epoch (when repeating) a marker without a sample, with the shards it read where it read them whole."""
    position = Position(start.epoch, start.consumed) if start else Position()
    kept = ShardCache() if repeat else None  # a stream read once has nothing to keep
    own = splits_shards(shards, world)
    weights = shard_weights(shards) if own else {}
    if world > 1 and not own and rank == 0:
        warn_unsplit(shards, world)
    while True:
        whole_epoch = position.consumed == 0  # a resumed epoch may legitimately have nothing left
        rng = np.random.default_rng([seed, position.epoch])
        order = epoch_order(shards, seed, position.epoch, shuffle_buffer > 0)
        if own:
            order = deal(order, weights, world)[rank]
        index = 0
        for raw in _shuffled(read_samples(order, log, kept), shuffle_buffer, rng):
            index += 1
            if index <= position.consumed:
                continue
            position = Position(position.epoch, index)
            if (not own and (index - 1) % world != rank) or (picked is not None and not picked(index - 1)):
                continue
            # encoded only later: samples already consumed, or another rank's, cost a read, not a decode
            varied = _variation(seed, position.epoch, index, rank if own else None) if augment else None
            yield (position, None), raw, varied
        if not repeat:
            return
        yield (position, order if whole_epoch else None), None, None
        position = Position(position.epoch + 1, 0)


def _variation(seed: int, epoch: int, index: int, rank: int | None) -> tuple[int, ...]:
    """The seed of a sample's training variation; a process reading shards of its own counts its own
    samples, so its rank keeps its variations apart from another's sample of the same index."""
    return (seed, epoch, index) if rank is None else (seed, epoch, index, rank)


def _none_usable(
    read: list[str], shards: int, log: SkipLog, seq_len: int, rank: int, world: int
) -> DataError:
    """The error of an epoch that yielded nothing from the shards ``read`` (of ``shards`` in all)."""
    whose = f", read by process {rank} of {world}" if len(read) < shards else ""
    return DataError(f"no usable sample in {_why_none(read, log, seq_len)}{whose}")


def _why_none(shards: list[str], log: SkipLog, seq_len: int) -> str:
    why = log.why_none(shards, "none read")
    if log.reasons["too long"] and log.lengths:
        why += (
            f" (the longest has {max(log.lengths)} tokens, over data.seq_len {seq_len}; "
            "unset, data.seq_len is sized to the samples)"
        )
    return why


def spread(count: int, whole: int) -> Callable[[int], bool]:
    """Picks ``count`` of ``whole`` indices, evenly spread: a held-out set written class by class (as
    shards built from one folder per class are) is then still evaluated on every class."""
    return lambda index: (index * count) // whole != ((index + 1) * count) // whole


SHUFFLE_BYTES = 256 << 20
"""The shuffle pool also stops growing at this many bytes: 1,000 documents of megabytes would not fit."""


def _shuffled(items: Iterator[RawSample], buffer: int, rng: np.random.Generator) -> Iterator[RawSample]:
    if buffer <= 1:
        yield from items
        return
    pool: list[RawSample] = []
    held = 0
    for item in items:
        pool.append(item)
        held += _size(item)
        while len(pool) >= buffer or (held > SHUFFLE_BYTES and len(pool) > 1):
            taken = pool.pop(int(rng.integers(len(pool))))
            held -= _size(taken)
            yield taken
    while pool:
        yield pool.pop(int(rng.integers(len(pool))))


def _size(sample: RawSample) -> int:
    return sum(len(value) for value in sample.fields.values())


def batches(
    stream: Iterator[tuple[EncodedSample, Position]],
    batch_size: int,
    seq_len: int,
    *,
    pack: bool = False,
    align: int = 1,
    split: bool = False,
    fill: bool = True,
) -> Generator[tuple[Batch, Position], None, None]:
    """Rows of ``seq_len`` tokens, ``batch_size`` rows a batch. With ``pack``, consecutive samples share
    a row while they fit (each keeps its BOS..EOS), which wastes far less compute on padding.

    ``split`` (for heads whose samples mean the same in any window, such as language modelling): a
    sample longer than a row is cut into rows instead of skipped, and with ``pack`` and ``fill`` too
    the sample that does not fit fills the row's end and goes on in the next row,
    as pretraining data is concatenated and chunked: rows of texts averaging 1.5 KB were a quarter
    padding without it. Each piece is a sample of its own to the model: it attends within itself only.
    Evaluation keeps ``fill`` off, so a held-out text that fits a row is scored whole.

    Packed samples start at multiples of ``align`` (the model's patch length): a sample's bytes then
    fall into patches the same way wherever it lands in a row, as they do when it is generated from
    position 0. Unaligned, an image's rows or a WAV's 16-bit samples straddle patches differently in
    every row, and the model must learn each phase separately.

    The position after a batch is that of its last sample, so a resumed stream starts with the next one.
    """
    packer = _Packer(batch_size, seq_len, align, pack, split, fill and split and pack)
    for sample, position in stream:
        for rows, last in packer.place(sample, position):
            yield collate(rows, seq_len, align), last
    if packer.row:
        packer.rows.append(packer.row)
    if packer.rows:
        yield collate(packer.rows, seq_len, align), packer.last


class _Packer:
    """The rows ``batches`` fills: those closed, the open one and the tokens it holds, and the position
    after the last sample (or piece of one) placed."""

    def __init__(
        self, batch_size: int, seq_len: int, align: int, pack: bool, split: bool, fill: bool
    ) -> None:
        self.batch_size, self.seq_len, self.align = batch_size, seq_len, align
        self.pack, self.split, self.fill = pack, split, fill
        self.rows: list[list[EncodedSample]] = []
        self.row: list[EncodedSample] = []
        self.used = 0
        self.last = Position()

    def place(
        self, sample: EncodedSample, position: Position
    ) -> Iterator[tuple[list[list[EncodedSample]], Position]]:
        """Lay ``sample`` into rows; each time ``batch_size`` rows are closed, those rows and the
        position after them."""
        rest: EncodedSample | None = sample
        while rest is not None:
            rest, closed = self._put(rest, position)
            if closed and self.row:
                self.rows.append(self.row)
                self.row, self.used = [], 0
                if len(self.rows) == self.batch_size:
                    yield self.rows, self.last
                    self.rows = []

    def _put(self, rest: EncodedSample, position: Position) -> tuple[EncodedSample | None, bool]:
        """Put what of ``rest`` fits into the open row: what is left of it, and whether the row closes."""
        start = aligned(self.used, self.align) if self.row else 0
        room = self.seq_len - start
        if self.row and len(rest.tokens) > room and not (self.fill and room > 0):
            return rest, True  # the row ends before this sample, which opens the next row
        if self.split and len(rest.tokens) > room:  # its head fills this row; the position is inside it
            self.row.append(rest.piece(0, room))
            rest = rest.piece(room)
            self.last = Position(position.epoch, position.consumed - 1, rest.first)
            return rest, True
        self.row.append(rest)
        self.used, self.last = start + len(rest.tokens), position
        return None, not self.pack


def prefetch(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """Produce ``items`` on a background thread, ``depth`` ahead, so data preparation overlaps the
    model's step (decoders and torch's kernels release the GIL). Order and values are unchanged; an
    error in the producer is raised in the consumer."""
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(("end", None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            box.put(("error", error))

    worker = threading.Thread(target=produce, name="mbp-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        # The producer must be done before the interpreter exits: a thread still inside native code
        # (inflate, torch) at shutdown aborts the process. It finishes the item in hand, then stops.
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.1)
        worker.join()


def prefetch_helps(device: torch.device) -> bool:
    """Whether making batches on a background thread (``prefetch``) overlaps the step instead of slowing
    it: on a GPU the CPU would wait anyway; on a CPU only when torch's threads leave a core free. With 2
    cores and 2 torch threads the thread takes a core from the step's team, which then waits for it:
    the bundled demo (bf16, encodings kept) trained at 0.87-0.91 of its bare step's speed with the
    thread and 0.90-0.92 without, and in its first epoch, where samples are decoded, 0.79-0.86 against
    0.87-0.88."""
    if device.type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores
