"""The training data of one process: its batches, drawn as the run's state counts them, with the
samples skipped and the padding observed on the way."""

from __future__ import annotations

from collections.abc import Generator

from mbp.config import settled_batch_size, settled_seq_len
from mbp.data.batches import Batch, Position, batches, prefetch, prefetch_helps
from mbp.data.ranks import gather_positions, resumed_at, splits_shards, whole_run_log
from mbp.data.skips import SkipLog
from mbp.data.workers import planned_workers
from mbp.resolve import Resolved
from mbp.train import distributed
from mbp.train.checkpoint import TrainState
from mbp.train.watch import PaddingWatch


class TrainingStream:
    """``shards`` as this process trains on them, from where ``state`` left off."""

    def __init__(
        self, resolved: Resolved, shards: list[str], state: TrainState, world: distributed.World, align: int
    ) -> None:
        self.state, self.world, self.shards = state, world, shards
        # where each process reads shards of its own, each names the damage it meets
        self.log = SkipLog(quiet=not world.is_main and not splits_shards(shards, world.size))
        # the run's count so far is rank 0's to carry: the others count what they skip from here
        self.log.samples_skipped = state.samples_skipped if world.is_main else 0
        self.batches = _train_batches(resolved, shards, self.log, state, world, align)
        self.padding = PaddingWatch(settled_seq_len(resolved.pipeline.data), resolved.pipeline.data.pack)

    def draw(self) -> Batch:
        """The next batch of this process, counted in the run's state as it is drawn."""
        batch, position = next(self.batches)
        world, state = self.world, self.state
        if world.is_main:
            self.padding.observe(batch.num_tokens, batch.tokens.numel())
        state.samples_seen += batch.samples_started * world.size
        state.epoch, state.consumed, state.taken = position.epoch, position.consumed, position.taken
        return batch

    def whole_run_log(self) -> SkipLog:
        """What every process skipped (a collective call where processes read shards of their own)."""
        return whole_run_log(self.log, self.shards, self.world.size)

    def gather(self, state: TrainState) -> None:
        """Every process's position and the run's skips into ``state``, as a checkpoint records them (a
        collective call): each process resumes at its own next sample."""
        if self.world.size > 1:
            state.ranks = gather_positions((state.epoch, state.consumed, state.taken), self.world.device)
            state.samples_skipped = self.whole_run_log().samples_skipped

    def close(self) -> None:
        """Stops the prefetch thread."""
        self.batches.close()


def _train_batches(
    resolved: Resolved,
    shards: list[str],
    log: SkipLog,
    state: TrainState,
    world: distributed.World,
    align: int,
) -> Generator[tuple[Batch, Position], None, None]:
    data, split = resolved.pipeline.data, resolved.split
    at = (world.rank, world.size)
    start = Position(*resumed_at(shards, state.ranks, (state.epoch, state.consumed, state.taken), *at))
    stream = resolved.stream(training=True, augment=True).samples(
        shards,
        log,
        start=start,
        rank=world.rank,
        world=world.size,
        workers=planned_workers(data.workers, world.device),
    )
    rows = batches(
        stream,
        settled_batch_size(data) // world.size,
        settled_seq_len(data),
        pack=data.pack,
        align=align,
        split=split,
    )
    return prefetch(rows) if prefetch_helps(world.device) else rows
