"""The training data of one process: its batches, drawn as the run's state counts them, with the
samples skipped and the padding observed on the way."""

from __future__ import annotations

from collections.abc import Generator

from mbp.data.batches import Batch, Position, batches, encoded_stream, prefetch, prefetch_helps
from mbp.data.skips import SkipLog
from mbp.heads import splits_samples
from mbp.resolve import Resolved
from mbp.train import distributed
from mbp.train.checkpoint import TrainState
from mbp.train.watch import PaddingWatch


class TrainingStream:
    """``shards`` as this process trains on them, from where ``state`` left off."""

    def __init__(
        self, resolved: Resolved, shards: list[str], state: TrainState, world: distributed.World, align: int
    ) -> None:
        self.state, self.world = state, world
        self.log = SkipLog(quiet=not world.is_main)
        self.log.samples_skipped = state.samples_skipped
        self.batches = _train_batches(resolved, shards, self.log, state, world, align)
        self.padding = PaddingWatch(resolved.pipeline.data.row_len, resolved.pipeline.data.pack)

    def draw(self) -> Batch:
        """The next batch of this process, counted in the run's state as it is drawn."""
        batch, position = next(self.batches)
        world, state = self.world, self.state
        if world.is_main:
            self.padding.observe(batch.num_tokens, batch.tokens.numel())
        state.samples_seen += batch.samples_started * world.size
        state.epoch, state.consumed, state.taken = position.epoch, position.consumed, position.taken
        return batch

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
    data, cfg = resolved.pipeline.data, resolved.pipeline.train
    split = splits_samples(resolved.head)
    stream = encoded_stream(
        shards,
        resolved.encoder,
        data.row_len,
        log,
        seed=cfg.seed,
        shuffle_buffer=data.shuffle_buffer,
        start=Position(state.epoch, state.consumed, state.taken),
        rank=world.rank,
        world=world.size,
        augment=True,
        split=split,
    )
    rows = batches(
        stream, data.batch_rows // world.size, data.row_len, pack=data.pack, align=align, split=split
    )
    return prefetch(rows) if prefetch_helps(world.device) else rows
