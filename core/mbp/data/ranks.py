"""Which shards each process of a distributed run reads: whole shards, balanced by size.

With N processes and at least N shards, every shard is read by exactly one process in an epoch, so a
run on N machines fetches each byte of its corpus once an epoch instead of N times. The epoch's shard
order (shuffled by seed and epoch where the stream shuffles) is dealt out largest first, each shard to
the process with the fewest bytes so far (ties: fewest shards, then lowest rank), and each process reads
its own in the epoch's order: a function of the seed, the epoch and the world size alone, so the global
batches replay exactly. A local shard weighs its file size; a streamed one (URL, ``pipe:``) is not asked
for its size, which would cost a request per shard on every process: streamed shards weigh one each
(shards of a corpus are written to about the same size).

Fewer shards than processes cannot be dealt whole: every process then reads every shard and keeps sample
``i`` where ``i % N`` is its rank, as a world of one keeps all.

Each process ends its epochs when its own shards run out, so processes can be in different epochs at one
step; per epoch, the samples all processes take together are the training set, each once. A checkpoint
records every process's position (:func:`gather_positions`) and each resumes at its own.
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Sequence

import torch

from mbp.data.skips import SkipLog
from mbp.data.sources import is_stream
from mbp.errors import warn


def splits_shards(shards: Sequence[str], world: int) -> bool:
    """Whether ``world`` processes each read whole shards of their own (else every process reads all)."""
    return world > 1 and len(shards) >= world


def shard_weights(shards: Sequence[str]) -> dict[str, int]:
    """Each shard's weight in the split: its file size, or 1 for every shard where any is streamed (a
    size cannot be weighed against a count). A file that cannot be read weighs 0: its process names it."""
    if any(is_stream(shard) for shard in shards):
        return {shard: 1 for shard in shards}
    weights: dict[str, int] = {}
    for shard in shards:
        try:
            weights[shard] = os.stat(shard).st_size
        except OSError:
            weights[shard] = 0
    return weights


def epoch_order(shards: Sequence[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    """The shards in the order an epoch reads them: as given, or shuffled by seed and epoch."""
    order = list(shards)
    if shuffle:
        random.Random(seed + epoch).shuffle(order)
    return order


def deal(order: Sequence[str], weights: dict[str, int], world: int) -> list[list[str]]:
    """``order`` dealt out to ``world`` processes: largest first, each to the least loaded one; each
    process's shards keep their place in ``order``."""
    ranked = sorted(range(len(order)), key=lambda i: -weights.get(order[i], 0))  # stable: ties keep order
    loads = [(0, 0, rank) for rank in range(world)]
    owned: list[list[int]] = [[] for _ in range(world)]
    for index in ranked:
        load, count, rank = heapq.heappop(loads)
        owned[rank].append(index)
        heapq.heappush(loads, (load + weights.get(order[index], 0), count + 1, rank))
    return [[order[i] for i in sorted(mine)] for mine in owned]


def warn_unsplit(shards: Sequence[str], world: int) -> None:
    """The one line saying that ``world`` processes all read every shard, since there are too few."""
    warn(
        f"{len(shards)} training shard(s) for {world} processes: every process reads every "
        f"shard and keeps its share of the samples; write at least {world} shards (ideally many more) so "
        "that each process reads only its own"
    )


def gather_positions(position: tuple[int, int, int], device: torch.device) -> list[list[int]]:
    """Every process's stream position (epoch, consumed, taken), by rank: a collective call."""
    import torch.distributed as dist

    mine = torch.tensor(list(position), dtype=torch.long, device=device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [[int(value) for value in held.tolist()] for held in every]


def resumed_at(
    shards: Sequence[str], recorded: list[list[int]] | None, own: tuple[int, int, int], rank: int, world: int
) -> tuple[int, int, int]:
    """Where process ``rank`` of ``world`` resumes: its recorded position (``recorded``: every process's,
    by rank; None where one process wrote the checkpoint, whose position is ``own``). A checkpoint from
    another world size whose shards were split, or are split now, cannot be mapped onto this one: every
    process starts the earliest recorded epoch over, and rank 0 says so."""
    if recorded is None and not any(own):  # a fresh start: every process at its stream's beginning
        return own
    positions = recorded if recorded is not None else [list(own)]
    if len(positions) == world:
        epoch, consumed, taken = positions[rank]
        return epoch, consumed, taken
    if not splits_shards(shards, len(positions)) and not splits_shards(shards, world):
        epoch, consumed, taken = positions[0]  # one stream, taken in turns: rank 0's place in it
        return epoch, consumed, taken
    epoch = min(position[0] for position in positions)
    if rank == 0:
        warn(
            f"the checkpoint's data positions are those of {len(positions)} process(es), and "
            f"{world} split the shards differently: the data stream starts epoch {epoch} over"
        )
    return epoch, 0, 0


def whole_run_log(log: SkipLog, shards: Sequence[str], world: int) -> SkipLog:
    """What every process skipped, on every process: a collective call. Where each process read shards of
    its own, the counts add up; where every process read every shard, each counted the same damage, and
    its own log already tells the run's."""
    if not splits_shards(shards, world):
        return log
    import torch.distributed as dist

    every: list[SkipLog | None] = [None] * world
    dist.all_gather_object(every, log)
    merged = SkipLog(quiet=True)
    for each in every:
        assert each is not None, "all_gather_object fills every place"
        merged.samples_skipped += each.samples_skipped
        merged.shards_failed += each.shards_failed
        merged.reasons.update(each.reasons)
        merged.failed += [name for name in each.failed if name not in merged.failed]
    merged.lengths = log.lengths
    return merged
