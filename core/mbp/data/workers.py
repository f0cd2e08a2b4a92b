"""Decoding and encoding samples in worker processes, in the stream's order (``data.workers``).

The training process reads the shards and draws the stream's order (cheap: tar headers and a shuffle);
the workers decode and encode (PNG, JPEG, WAV resampling: the costly part), and their results are taken
back in the order the samples were sent. So the batches are those of ``data.workers: 0`` for the same
seed, a skipped sample is counted once (by the training process, when its result comes back), and a
resumed stream stands where it stood. A worker is a fork of the training process: the encoder is not
pickled, and plugin codecs need not be picklable. Each worker keeps its own encoded fields
(``FieldCache``), so a set read many times is decoded once per worker at most.

Planned where unset (:func:`planned_workers`): the cores this process has beyond what its step keeps busy.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from mbp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mbp.data.encode import SampleEncoder
    from mbp.data.read import RawSample
    from mbp.sample import EncodedSample

T = TypeVar("T")

MOST_WORKERS = 8
"""The planned count's ceiling: past it, more processes mostly add copies of the encoded-field cache."""
CHUNK_SAMPLES = 16
CHUNK_BYTES = 8 << 20
"""A chunk of samples sent to a worker at once ends at this many field bytes, or CHUNK_SAMPLES samples."""
CHUNKS_PER_WORKER = 2
"""Chunks in flight a worker: enough to keep each busy while the training process reads ahead."""

_encoder: SampleEncoder | None = None
"""The encoder a worker inherited from the training process."""


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def planned_workers(setting: int | None, device: torch.device) -> int:
    """``data.workers``, or where it is unset the cores left to this process after its step: its share of
    the machine's cores (``LOCAL_WORLD_SIZE`` processes share them, as torchrun starts them) less torch's
    threads on a CPU, less 2 on a GPU (the thread driving it and the reader). Fewer than 2 left: 0, the
    stream decodes in the training process, as one worker would only add a hop. On a 2-core CPU that is
    always 0; on a 16-core GPU machine with one process, 8 (``MOST_WORKERS``); 0 where processes cannot
    be forked.

    Raises:
        ConfigError: workers asked for where processes cannot be forked.
    """
    forks = "fork" in multiprocessing.get_all_start_methods()
    if setting is not None:
        if setting and not forks:
            raise ConfigError(
                f"data.workers {setting}: worker processes are forks, which this system lacks; set 0"
            )
        return setting
    local = os.environ.get("LOCAL_WORLD_SIZE", "1").strip()
    share = cores() // (int(local) if local.isdigit() and int(local) > 0 else 1)
    busy = torch.get_num_threads() if device.type == "cpu" else 2
    left = share - busy
    return min(left, MOST_WORKERS) if left >= 2 and forks else 0


def encode_in_order(
    items: Iterator[tuple[T, RawSample | None, tuple[int, ...] | None]],
    encoder: SampleEncoder,
    workers: int,
) -> Iterator[tuple[T, EncodedSample | DataError | None]]:
    """Each ``(tag, raw, varied)`` as ``(tag, outcome)``, in the order given: the encoded sample, or the
    ``DataError`` that skips it; ``varied`` seeds the training variation (None: none). An item without a
    sample (``raw`` None) is a marker, passed through in its place with outcome None."""
    if workers <= 0:
        for tag, raw, varied in items:
            yield tag, None if raw is None else _encode(encoder, raw, varied)
        return
    yield from _pooled(items, encoder, workers)


def _pooled(
    items: Iterator[tuple[T, RawSample | None, tuple[int, ...] | None]],
    encoder: SampleEncoder,
    workers: int,
) -> Iterator[tuple[T, EncodedSample | DataError | None]]:
    context = multiprocessing.get_context("fork")
    pending: deque[tuple[list[T], Future[list[EncodedSample | DataError]] | None]] = deque()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(encoder,))
    try:
        tags: list[T] = []
        chunk: list[tuple[RawSample, tuple[int, ...] | None]] = []
        size = 0

        def send() -> None:
            nonlocal tags, chunk, size
            if chunk:
                pending.append((tags, pool.submit(_encode_chunk, chunk)))
                tags, chunk, size = [], [], 0

        for tag, raw, varied in items:
            if raw is None:
                send()
                pending.append(([tag], None))
            else:
                tags.append(tag)
                chunk.append((raw, varied))
                size += sum(len(data) for data in raw.fields.values())
                if len(chunk) >= CHUNK_SAMPLES or size >= CHUNK_BYTES:
                    send()
            while len(pending) > CHUNKS_PER_WORKER * workers:
                yield from _taken(pending.popleft())
        send()
        while pending:
            yield from _taken(pending.popleft())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _taken(
    entry: tuple[list[T], Future[list[EncodedSample | DataError]] | None],
) -> Iterator[tuple[T, EncodedSample | DataError | None]]:
    tags, result = entry
    if result is None:
        yield tags[0], None
        return
    try:
        outcomes = result.result()
    except BrokenProcessPool:
        raise DataError(
            "a data.workers process ended abruptly (killed, or out of memory?) while encoding samples; "
            "set data.workers: 0 to encode in the training process"
        ) from None
    yield from zip(tags, outcomes, strict=True)


def _start(encoder: SampleEncoder) -> None:
    """A worker's setup: the encoder it inherited, its cache's lock new (one held by another thread of the
    training process at the fork would never be released here); Ctrl-C is the training process's to
    handle; one torch thread, as the cores are shared with the other workers."""
    global _encoder
    encoder.cache.forked()
    _encoder = encoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _encode_chunk(chunk: list[tuple[RawSample, tuple[int, ...] | None]]) -> list[EncodedSample | DataError]:
    assert _encoder is not None, "a worker encodes only after _start"
    return [_encode(_encoder, raw, varied) for raw, varied in chunk]


def _encode(
    encoder: SampleEncoder, raw: RawSample, varied: tuple[int, ...] | None
) -> EncodedSample | DataError:
    try:
        return encoder.encode(raw, None if varied is None else np.random.default_rng(list(varied)))
    except DataError as error:
        return error
