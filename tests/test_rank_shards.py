"""Each process of a distributed run reads whole shards of its own, balanced by size: it opens only its
shards, the samples all processes take in an epoch are the training set, each once, and every process
resumes at its own sample. Checked in one process by rank, and across real gloo process groups of 2 and 4."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mbp.data import read
from mbp.data.batches import Position, encoded_stream
from mbp.data.encode import SampleEncoder
from mbp.data.ranks import deal, epoch_order, resumed_at, shard_weights
from mbp.data.skips import SkipLog
from mbp.errors import DataError
from mbp.plugins import get_platform
from mbp.resolve import resolve

from tests.conftest import free_port
from tests.shardkit import write_tar
from tests.test_augment import REGISTRY, glyph

COUNTS = [3, 7, 4, 6, 5, 2, 8, 5]
"""Samples in each of the eight shards: sizes differ, so the split is by size, not by count."""
BUFFER = 4


def make_shards(folder: Path) -> list[str]:
    paths = []
    for shard, count in enumerate(COUNTS):
        samples = [
            {"__key__": f"k{shard}-{i}".encode(), "image.png": glyph(i), "answer.txt": b"one"}
            for i in range(count)
        ]
        write_tar(folder / f"train-{shard}.tar", samples)
        paths.append(str(folder / f"train-{shard}.tar"))
    return paths


def encoder_in(folder: Path) -> SampleEncoder:
    registry = folder / "registry.yaml"
    registry.write_text(REGISTRY)
    return resolve(str(registry), "digits", components=get_platform().components).encoder


def stream(
    shards: list[str], encoder: SampleEncoder, rank: int, world: int, start: Position | None = None
) -> Iterator[tuple[str, Position]]:
    log = SkipLog(quiet=True)
    items = encoded_stream(
        shards,
        encoder,
        512,
        log,
        seed=3,
        shuffle_buffer=BUFFER,
        rank=rank,
        world=world,
        start=start,
        augment=True,
    )
    return ((sample.key, position) for sample, position in items)


def epochs_of(
    shards: list[str], encoder: SampleEncoder, rank: int, world: int, opened: list[str] | None = None
) -> tuple[dict[int, list[str]], list[str]]:
    """The keys this rank takes in epochs 0 and 1, and the shards (of ``opened``, the opens counted) it
    opened in epoch 0: the stream reads lazily, so when epoch 0's last sample arrives, epoch 1 has opened
    nothing yet."""
    taken: dict[int, list[str]] = {}
    first: list[str] = []
    for key, position in stream(shards, encoder, rank, world):
        if position.epoch == 2:
            break
        taken.setdefault(position.epoch, []).append(key)
        if position.epoch == 0 and opened is not None:
            first = list(opened)
    return taken, first


def counting_opens(monkeypatch: pytest.MonkeyPatch | None = None) -> list[str]:
    """The shards opened from now on, in order (every read goes through ``read.shard_samples``)."""
    opened: list[str] = []
    plain = read.shard_samples

    def counted(shard: str, log: SkipLog) -> Iterator[read.RawSample]:
        opened.append(Path(shard).name)
        return plain(shard, log)

    if monkeypatch is not None:
        monkeypatch.setattr(read, "shard_samples", counted)
    else:
        read.shard_samples = counted
    return opened


def test_shards_are_dealt_whole_largest_first_to_the_least_loaded() -> None:
    order = ["a", "b", "c", "d", "e", "f"]
    weights = {"a": 100, "b": 60, "c": 50, "d": 40, "e": 10, "f": 10}
    dealt = deal(order, weights, 2)
    assert dealt == [["a", "d"], ["b", "c", "e", "f"]]  # 140 and 130 bytes; each keeps the epoch's order
    assert [sum(weights[s] for s in mine) for mine in dealt] == [140, 130]
    assert deal(order, dict.fromkeys(order, 1), 4) == [["a", "e"], ["b", "f"], ["c"], ["d"]]


def test_streamed_shards_weigh_one_each(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"1234")
    assert shard_weights([str(tmp_path / "x.tar"), str(tmp_path / "gone.tar")]) == {
        str(tmp_path / "x.tar"): 4,
        str(tmp_path / "gone.tar"): 0,
    }
    assert set(shard_weights([str(tmp_path / "x.tar"), "http://h/y.tar"]).values()) == {1}


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_opens_only_its_shards_and_an_epoch_is_the_set_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: int
) -> None:
    shards = make_shards(tmp_path)
    encoder = encoder_in(tmp_path)
    union: dict[int, Counter[str]] = {0: Counter(), 1: Counter()}
    opens = []
    for rank in range(world):
        opened = counting_opens(monkeypatch)
        mine = [
            Path(s).name for s in deal(epoch_order(shards, 3, 0, True), shard_weights(shards), world)[rank]
        ]
        epochs, first = epochs_of(shards, encoder, rank, world, opened)
        assert first == mine  # epoch 0: its own shards, each opened once, and no other
        opens.append(len(first))
        for epoch, keys in epochs.items():
            union[epoch].update(keys)
    assert opens == ([4, 4] if world == 2 else [2, 2, 2, 2])
    everything = Counter(f"k{shard}-{i}" for shard, count in enumerate(COUNTS) for i in range(count))
    assert union[0] == everything and union[1] == everything  # each sample once an epoch


def test_fewer_shards_than_ranks_split_samples_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = make_shards(tmp_path)[:3]
    encoder = encoder_in(tmp_path)
    union: Counter[str] = Counter()
    for rank in range(4):
        union.update(epochs_of(shards, encoder, rank, 4)[0][0])
    assert union == Counter(f"k{shard}-{i}" for shard in range(3) for i in range(COUNTS[shard]))
    assert capsys.readouterr().err.splitlines() == [
        "mbp: warning: 3 training shard(s) for 4 processes: every process reads every shard and keeps its "
        "share of the samples; write at least 4 shards (ideally many more) so that each process reads only "
        "its own"
    ]


def test_a_process_whose_own_shards_give_nothing_says_so(tmp_path: Path) -> None:
    shards = make_shards(tmp_path)[:1]
    (tmp_path / "junk.tar").write_bytes(b"not a tar " * 10)
    shards.append(str(tmp_path / "junk.tar"))
    encoder = encoder_in(tmp_path)
    assert len(list(itertools.islice(stream(shards, encoder, 0, 2), 5))) == 5  # the good shard is rank 0's
    with pytest.raises(DataError) as raised:
        next(stream(shards, encoder, 1, 2))
    assert (
        str(raised.value) == f"no usable sample in 1 shard(s) ({shards[1]}): 1 shard, read by process 1 of 2"
    )


def test_every_rank_resumes_at_its_own_next_sample(tmp_path: Path) -> None:
    shards = make_shards(tmp_path)
    encoder = encoder_in(tmp_path)
    whole = {rank: list(itertools.islice(stream(shards, encoder, rank, 2), 30)) for rank in range(2)}
    stops = {0: 9, 1: 21}  # rank 1 past its first epoch
    recorded = [[p.epoch, p.consumed, p.taken] for p in (whole[r][stops[r] - 1][1] for r in range(2))]
    assert recorded[0][0] == 0 and recorded[1][0] == 1
    for rank in range(2):
        start = Position(*resumed_at(shards, recorded, (0, 0, 0), rank, 2))
        resumed = [
            key for key, _ in itertools.islice(stream(shards, encoder, rank, 2, start), 30 - stops[rank])
        ]
        assert resumed == [key for key, _ in whole[rank][stops[rank] :]]


def test_a_checkpoint_of_another_world_size_starts_its_epoch_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = make_shards(tmp_path)
    assert resumed_at(shards, None, (2, 17, 5), 0, 1) == (2, 17, 5)
    assert resumed_at(shards[:1], None, (2, 17, 5), 1, 2) == (2, 17, 5)  # one stream, taken in turns
    assert resumed_at(shards, [[3, 4, 0], [2, 9, 1]], (3, 4, 0), 0, 4) == (2, 0, 0)
    assert capsys.readouterr().err.strip() == (
        "mbp: warning: the checkpoint's data positions are those of 2 process(es), and 4 split the shards "
        "differently: the data stream starts epoch 2 over"
    )


def gloo_rank(rank: int, world: int, port: int, folder: str) -> None:
    """One process of a gloo group: its opens, its keys of epochs 0 and 1, and a resume at its own
    sample after a gathered checkpoint position, all gathered to rank 0, which writes them down."""
    import torch.distributed as dist
    from mbp.data.ranks import gather_positions, whole_run_log

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shards = sorted(str(p) for p in Path(folder).glob("train-*.tar"))
        encoder = encoder_in(Path(folder) / f"rank{rank}")
        epochs, first_epoch_opens = epochs_of(shards, encoder, rank, world, counting_opens())
        ahead = list(itertools.islice(stream(shards, encoder, rank, world), 6))
        at = ahead[2 + rank][1]  # each rank stops at a different sample
        positions = gather_positions((at.epoch, at.consumed, at.taken), torch.device("cpu"))
        start = Position(*resumed_at(shards, positions, (0, 0, 0), rank, world))
        resumed = [key for key, _ in itertools.islice(stream(shards, encoder, rank, world, start), 3 - rank)]
        skipped = SkipLog(quiet=True)
        for _ in range(rank + 1):
            skipped.sample(f"rank {rank}'s sample", "bad field")
        skipped.shard(f"s{rank % 2}.tar", "gone")
        merged = whole_run_log(skipped, shards, world)
        found = {
            "skips": [merged.samples_skipped, merged.shards_failed, merged.failed, dict(merged.reasons)],
            "opens": first_epoch_opens,
            "epochs": epochs,
            "resumed_right": resumed == [key for key, _ in ahead[3 + rank :]],
        }
        every: list[object] = [None] * world
        dist.all_gather_object(every, found)
        if rank == 0:
            (Path(folder) / "found.json").write_text(json.dumps(every))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_open_only_their_shards(tmp_path: Path, world: int) -> None:
    shards = make_shards(tmp_path)
    for rank in range(world):
        (tmp_path / f"rank{rank}").mkdir()
    mp.start_processes(gloo_rank, (world, free_port(), str(tmp_path)), nprocs=world, start_method="spawn")
    found = json.loads((tmp_path / "found.json").read_text())
    weights = shard_weights(shards)
    dealt = deal(epoch_order(shards, 3, 0, True), weights, world)
    everything = Counter(f"k{shard}-{i}" for shard, count in enumerate(COUNTS) for i in range(count))
    for epoch in ("0", "1"):
        assert sum((Counter(rank["epochs"][epoch]) for rank in found), Counter()) == everything
    for rank, mine in enumerate(dealt):
        names = [Path(shard).name for shard in mine]
        assert found[rank]["opens"] == names  # epoch 0: its own shards, each once, and no other
        assert found[rank]["resumed_right"]
        # every rank's skips, added up on every rank: the run's summary counts each once
        skips = sum(range(1, world + 1))
        assert found[rank]["skips"] == [
            skips,
            world,
            ["s0.tar", "s1.tar"],
            {"bad field": skips, "shard": world},
        ]
    assert [len(rank["opens"]) for rank in found] == ([4, 4] if world == 2 else [2, 2, 2, 2])
