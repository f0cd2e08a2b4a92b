"""``data.workers``: samples decoded and encoded in worker processes give the batches the training process
makes alone, for the same seed, variations included; a sample that fails is counted and named once;
a resumed stream stands where it stood. Unset, the count is planned from the cores left to the step."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
import torch
from mbp.data import workers
from mbp.data.batches import Position, batches, encoded_stream
from mbp.data.encode import SampleEncoder
from mbp.data.skips import SkipLog
from mbp.data.workers import planned_workers
from mbp.errors import DataError

from tests.shardkit import write_tar
from tests.test_augment import glyph
from tests.test_rank_shards import encoder_in


def make_shards(folder: Path) -> list[str]:
    paths = []
    for shard in range(3):
        samples = [
            {"__key__": f"k{shard}-{i}".encode(), "image.png": glyph(shard * 7 + i), "answer.txt": b"one"}
            for i in range(7)
        ]
        if shard == 1:
            samples[3]["image.png"] = b"not an image"
        write_tar(folder / f"train-{shard}.tar", samples)
        paths.append(str(folder / f"train-{shard}.tar"))
    return paths


def drawn(
    shards: list[str], encoder: SampleEncoder, count: int, workers: int, start: Position | None = None
) -> tuple[list[tuple[bytes, Position]], SkipLog]:
    """The first ``count`` batches (tokens and weights as bytes, and the position after each) of a
    shuffled, varied stream of 3 epochs' worth, and its log."""
    log = SkipLog()
    stream = encoded_stream(
        shards, encoder, 320, log, seed=5, shuffle_buffer=6, augment=True, start=start, workers=workers
    )
    made = itertools.islice(batches(stream, 2, 320, pack=True, align=4), count)
    taken = [(batch.tokens.numpy().tobytes() + batch.weights.numpy().tobytes(), at) for batch, at in made]
    stream.close()
    return taken, log


def test_two_workers_give_the_same_batches_and_count_each_skip_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = make_shards(tmp_path)
    alone, alone_log = drawn(shards, encoder_in(tmp_path), 32, workers=0)
    alone_lines = capsys.readouterr().err.splitlines()
    pooled, pooled_log = drawn(shards, encoder_in(tmp_path), 32, workers=2)
    pooled_lines = capsys.readouterr().err.splitlines()
    assert alone[-1][1].epoch >= 2  # three epochs: the varied samples differ from one to the next
    assert pooled == alone
    assert pooled_log.samples_skipped == alone_log.samples_skipped == 3  # the bad image, once an epoch
    assert pooled_log.reasons == alone_log.reasons
    assert len(pooled_lines) == 3 and sorted(pooled_lines) == sorted(alone_lines)
    assert "train-1.tar:sample k1-3:field image.png" in pooled_lines[0]


def test_a_stream_resumed_with_workers_goes_on_at_the_same_sample(tmp_path: Path) -> None:
    shards = make_shards(tmp_path)
    whole, _ = drawn(shards, encoder_in(tmp_path), 10, workers=0)
    resumed, _ = drawn(shards, encoder_in(tmp_path), 6, workers=2, start=whole[3][1])
    assert resumed == whole[4:]


@pytest.mark.parametrize(
    ("cores", "threads", "device", "local", "planned"),
    [
        (2, 2, "cpu", "1", 0),  # this machine: as before, the step has every core
        (16, 4, "cpu", "1", 8),
        (16, 16, "cuda", "1", 8),  # torch's threads are idle while the GPU steps
        (16, 16, "cuda", "8", 0),  # two cores a process: one drives the GPU, one reads
        (64, 16, "cuda", "8", 6),
    ],
)
def test_unset_workers_are_planned_from_the_cores_left(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: int, device: str, local: str, planned: int
) -> None:
    monkeypatch.setattr(workers, "cores", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert planned_workers(None, torch.device(device)) == planned
    assert planned_workers(3, torch.device(device)) == 3  # a given count is kept


def test_a_worker_killed_ends_the_stream_with_one_line(tmp_path: Path) -> None:
    shards = make_shards(tmp_path)
    encoder = encoder_in(tmp_path)
    parent = os.getpid()
    codec = encoder.codecs["answer"]
    plain = codec.encode

    def dies_in_a_worker(data: bytes):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return plain(data)

    codec.encode = dies_in_a_worker  # type: ignore[method-assign]
    with pytest.raises(DataError) as raised:
        drawn(shards, encoder, 4, workers=1)
    assert str(raised.value) == (
        "a data.workers process ended abruptly (killed, or out of memory?) while encoding samples; "
        "set data.workers: 0 to encode in the training process"
    )
