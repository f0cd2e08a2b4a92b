"""``mbp run``: train and evaluate a pipeline, with exact resume."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mbp.config import TrainConfig
from mbp.data.batches import Batch, Position, batches, prefetch, prefetch_helps
from mbp.data.ranks import gather_positions, resumed_at, splits_shards, whole_run_log
from mbp.data.skips import SkipLog
from mbp.data.workers import planned_workers
from mbp.errors import ConfigError
from mbp.model.build import build_model
from mbp.model.checkpoint_files import checkpoint_document
from mbp.model.decoder import MultiscaleDecoder
from mbp.outdir import check_writable
from mbp.resolve import Resolved
from mbp.train import distributed as D
from mbp.train.allocator import keep_freed_memory
from mbp.train.cadence import Cadence
from mbp.train.checkpoint import TrainState, first_nonfinite, load_checkpoint, save_checkpoint
from mbp.train.deadline import Deadline, deadline_of
from mbp.train.evaluate import evaluate, held_out_batches
from mbp.train.init import init_from as load_initial_weights
from mbp.train.optim import describe_optimizer, make_optimizer
from mbp.train.plan import StepPlan, with_steps
from mbp.train.record import RunRecord
from mbp.train.recorded import recorded_optimizer, resume_changes
from mbp.train.report import Progress, run_summary
from mbp.train.rundir import check_belongs, prepare_out, remove_leftovers, resume_point
from mbp.train.schedule import lr_factor
from mbp.train.settle import Settled, as_recorded, settle
from mbp.train.step import LossStep, train_step
from mbp.train.watch import PaddingWatch, diverged, length_advice, note, warn


@dataclass(frozen=True)
class RunRequest:
    """Where a run writes and what it reads, beyond what its pipeline says."""

    out: Path
    train_shards: list[str]
    eval_shards: list[str]
    resume: bool = False
    init_from: Path | None = None
    """A checkpoint whose weights the model starts from (ignored when resuming)."""
    overwrite: bool = False
    """Replace a run already in ``out``."""
    take_intact: bool = False
    """Resume from the newest intact checkpoint when the newest is damaged."""


def run(resolved: Resolved, request: RunRequest) -> dict[str, Any]:
    """Train and evaluate ``resolved`` as its pipeline says; return the summary ``mbp run --json`` prints."""
    world = D.init_world()
    try:
        return Trainer(resolved, request, world).run()
    finally:
        D.shutdown(world)


class Trainer:
    """One training run: the model, its optimizer and data, and what gets logged and saved."""

    plan: StepPlan | None
    checkpoint: Path | None

    def __init__(self, resolved: Resolved, request: RunRequest, world: D.World) -> None:
        self.started = time.perf_counter()  # rows carry seconds since here: planning shows as the first gap
        self.request, self.world, self.out = request, world, request.out
        self.asked = resolved.pipeline.train  # as given, before planning settles precision and optimizer
        if world.device.type == "cpu":
            keep_freed_memory()
        self._take(settle(resolved, request.train_shards, request.eval_shards, world))
        self._setup_model()
        self.state, self.checkpoint = TrainState(0, 0, 0, 0, 0), None
        optim_state, resumed_optimizer = self._resume() if request.resume else (None, None)
        if self.plan is not None:
            self.plan = dataclasses.replace(self.plan, steps=self.cfg.total_steps)
        self.deadline = (  # a resumed run's clock started with the resume: it keeps its recorded steps
            deadline_of(self.plan, self.cfg.eval_every, request.train_shards, self.started)
            if self.plan is not None and not request.resume
            else None
        )
        self._setup_optimizer(optim_state)
        if world.is_main:
            self._announce(resumed_optimizer)
        self._setup_data()

    @property
    def cfg(self) -> TrainConfig:
        """The run's training settings; ``total_steps`` is the run's bound, changed only by a recount."""
        return self.resolved.pipeline.train

    def _take(self, settled: Settled) -> None:
        self.settled, self.resolved, self.plan = settled, settled.resolved, settled.plan
        self.precision, self.rows = settled.precision, settled.rows
        self.patch, self.variation = settled.patch, settled.variation

    def _setup_model(self) -> None:
        resolved, request, world = self.resolved, self.request, self.world
        torch.manual_seed(self.cfg.seed)
        self.model: MultiscaleDecoder = build_model(resolved.pipeline.model, resolved.components)
        if request.init_from is not None and not request.resume:
            load_initial_weights(request.init_from, self.model, resolved.pipeline.model)
        # only now: --overwrite may remove the checkpoint the initial weights come from
        prepare_out(self.out, resume=request.resume, overwrite=request.overwrite, main=world.is_main)
        if world.is_main:
            check_writable(self.out)
            remove_leftovers(self.out)
        self.model.to(world.device)
        row_len = resolved.pipeline.data.row_len
        if row_len % self.model.pack_align:  # varying patches: any row length
            raise ConfigError(
                f"data.seq_len {row_len} must be a multiple of the patch length {self.model.patch_len}"
            )

    def _resume(self) -> tuple[dict[str, Any], str | None]:
        """The newest checkpoint's weights and state, and the settings it recorded; its optimizer state
        and the optimizer it recorded."""
        self.checkpoint = resume_point(
            self.out, take_intact=self.request.take_intact, main=self.world.is_main
        )
        document = checkpoint_document(self.checkpoint, training=True)
        resolved = self.resolved
        check_belongs(self.checkpoint, resolved.name, resolved.pipeline, document, self.model)
        self._take(as_recorded(self.settled, document, self.asked.precision))
        changes = resume_changes(self.checkpoint, document, self.resolved.pipeline)
        if changes and self.world.is_main:
            warn(changes)
        self.state, optim_state = load_checkpoint(self.checkpoint, self.model)
        return optim_state, recorded_optimizer(document)

    def _setup_optimizer(self, optim_state: dict[str, Any] | None) -> None:
        world, cfg = self.world, self.cfg
        self.wrapped = D.wrap(LossStep(self.model), world, cfg.strategy, self.model.sharding_units())
        self.optimizer = make_optimizer(self.model, cfg)
        if optim_state is not None:
            D.load_optimizer(self.model, self.optimizer, optim_state, world, cfg.strategy)

    def _announce(self, resumed_optimizer: str | None) -> None:
        resolved, cfg = self.resolved, self.cfg
        rows = resolved.pipeline.data.batch_rows
        optimizer = describe_optimizer(self.optimizer, cfg, self.asked.optimizer, resumed_optimizer)
        note(
            f"training {resolved.name}: precision {self.precision.describe()}, {self.world.device.type}, "
            f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
            f"dropout {resolved.pipeline.model.dropout or 0:g}, {optimizer}, "
            f"{self.plan.describe() if self.plan else f'{cfg.total_steps} steps'}, "
            f"{rows} row{'s' if rows > 1 else ''} a step"
            + (f", {self.rows.describe()}" if self.rows else "")
            + (f", {self.patch.describe()}" if self.patch else "")
            + (f", {self.variation.describe()}" if self.variation else "")
        )
        advice = self.plan.advice() if self.plan is not None and not self.request.resume else None
        if advice:
            warn(advice)

    def _setup_data(self) -> None:
        resolved, request, world, out = self.resolved, self.request, self.world, self.out
        # where each process reads shards of its own, each names the damage it meets
        self.log = SkipLog(quiet=not world.is_main and not splits_shards(request.train_shards, world.size))
        # the run's count so far is rank 0's to carry: the others count what they skip from here
        self.log.samples_skipped = self.state.samples_skipped if world.is_main else 0
        align = self.model.pack_align
        self.train = _train_batches(resolved, request.train_shards, self.log, self.state, world, align)
        evals = request.eval_shards
        self.evals = held_out_batches(resolved, evals, align, quiet=not world.is_main) if evals else []
        self.cadence = Cadence(evaluates=bool(self.evals), deadline=self.deadline)
        resume_step = self.state.step if request.resume else None
        self.record = RunRecord(resolved, out, resume_step, world.is_main, self.started)
        self.padding = PaddingWatch(resolved.pipeline.data.row_len, resolved.pipeline.data.pack)

    def run(self) -> dict[str, Any]:
        self.progress = Progress(self.cfg.total_steps, self.state.step)
        self.wrapped.train()
        try:
            while self.state.step < self.cfg.total_steps:
                self.after(self.timed_step())
        finally:
            self.train.close()  # stops the prefetch thread before anything else shuts down
            self.record.close()
        self.progress.done()
        return self.summary()

    def timed_step(self) -> float:
        """One step, its seconds told to the deadline and the progress line; its loss."""
        started = time.perf_counter()
        loss, tokens = self.step()
        seconds = time.perf_counter() - started
        if self.deadline is not None:
            self.deadline.stepped(seconds)
        self.progress.update(self.state.step, loss, tokens / seconds)
        return loss

    def after(self, loss: float) -> None:
        """What the cadence has due after the step just taken, in its order."""
        due, deadline = self.cadence.due(self.state.step, self.cfg), self.deadline
        if "log" in due:
            lr = self.optimizer.param_groups[0]["lr"]
            self.record.log_train(self.state.step, loss, lr, self.state.samples_seen)
        paused = self.record.paused(self.evaluate) if "evaluate" in due else 0.0
        if "recount" in due and deadline is not None:
            self.count_again(deadline, paused)
        if "save" in due:
            self.record.paused(self.save)
        if "refit" in due and deadline is not None:
            self.refit(deadline)

    def summary(self) -> dict[str, Any]:
        """What ``mbp run --json`` prints, after saying what the run's lengths and curve advise."""
        data, cfg = self.resolved.pipeline.data, self.cfg
        advice = length_advice(
            self.log.lengths, data.row_len, self.model.patch_len, self.log.reasons["too long"]
        )
        if advice and self.world.is_main:
            warn(advice)
        capped = self.plan is not None and self.plan.capped
        record = self.record
        unfinished = record.learning.at_end(
            record.best.step, cfg.total_steps, cfg.minutes if capped else None
        )
        if unfinished and self.world.is_main:
            note(unfinished)
        log = whole_run_log(self.log, self.request.train_shards, self.world.size)
        summary = run_summary(
            self.resolved, self.state, log, record.last_eval, self.checkpoint, self.out, record.metrics
        )
        summary["precision"] = self.precision.precision
        summary["best"] = record.best.describe()
        if self.rows is not None:
            summary["row_plan"] = self.rows.summary()
        if self.variation is not None:
            summary["variation"] = self.variation.summary(bool(data.augment))
        if self.plan is not None:
            changes = self.deadline.summary() if self.deadline is not None else {}
            summary["step_plan"] = {**self.plan.summary(), **changes}
        return summary

    def step(self) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` batches; returns the mean loss and the bytes trained."""
        cfg, state, world = self.cfg, self.state, self.world
        factor = lr_factor(
            state.step, warmup=cfg.warmup_steps, total=cfg.total_steps, min_ratio=cfg.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        drawn = [self.draw() for _ in range(cfg.grad_accum)]
        result = train_step(
            self.wrapped, self.model, self.optimizer, drawn, self.precision, cfg.clip, self.finite
        )
        state.step += 1
        state.samples_skipped = self.log.samples_skipped
        tokens = result.tokens * world.size
        self.record.trained(tokens)
        return result.loss, tokens

    def draw(self) -> Batch:
        """The next batch of this process, counted in the run's state as it is drawn."""
        batch, position = next(self.train)
        world, state = self.world, self.state
        if world.is_main:
            self.padding.observe(batch.num_tokens, batch.tokens.numel())
        state.samples_seen += batch.samples_started * world.size
        state.epoch, state.consumed, state.taken = position.epoch, position.consumed, position.taken
        return batch

    def finite(self, loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, float]:
        """The step's loss and gradient norm, read in the step's one transfer from the device; a
        non-finite one on any process stops every process before the optimizer applies it."""
        health = torch.stack([loss, norm.float()])
        agreed = D.all_reduce_sum(health.clone(), self.world) if self.world.size > 1 else health
        values = torch.cat([health, agreed]).tolist()
        if not all(map(math.isfinite, values)):
            what = f"loss {values[0]:g}, gradient norm {values[1]:g}"
            raise diverged(self.state.step + 1, what, self.checkpoint, self.cfg.lr)
        return values[0], values[1]

    def evaluate(self) -> None:
        started = time.perf_counter()
        result = evaluate(self.model, self.evals, self.resolved.head, precision=self.precision)
        seconds = time.perf_counter() - started
        self.record.evaluated(self.state.step, result, seconds, self.model, self.resolved)

    def save(self) -> None:
        model_state, optim_state = D.full_states(self.model, self.optimizer, self.world, self.cfg.strategy)
        bad = first_nonfinite(model_state, optim_state) if self.world.is_main else None
        if D.broadcast_int(int(bad is not None), self.world):  # rank 0 holds the full states
            raise diverged(
                self.state.step, f"{bad or 'a tensor'} is not finite", self.checkpoint, self.cfg.lr
            )
        if self.world.size > 1:
            at = (self.state.epoch, self.state.consumed, self.state.taken)
            self.state.ranks = gather_positions(at, self.world.device)
            self.state.samples_skipped = whole_run_log(
                self.log, self.request.train_shards, self.world.size
            ).samples_skipped
        if self.world.is_main:
            self.checkpoint = save_checkpoint(
                self.out,
                model_state,
                optim_state,
                self.state,
                self.resolved.name,
                self.resolved.pipeline,
                self.cfg.keep_checkpoints,
            )
        D.barrier(self.world)

    def count_again(self, deadline: Deadline, paused: float) -> None:
        """The steps that fit what is left of the budget, from the run's own timing (``Deadline``);
        every process takes rank 0's."""
        replan = deadline.replan(self.state.step, self.cfg.total_steps, time.perf_counter(), paused)
        self.take_steps(deadline, D.broadcast_int(replan.steps, self.world), replan.describe())

    def refit(self, deadline: Deadline) -> None:
        """The steps that fit the budget at the run's pace since its last count; rank 0's decision."""
        change = deadline.refit(self.state.step, self.cfg.total_steps, time.perf_counter())
        steps = D.broadcast_int(change.steps if change else self.cfg.total_steps, self.world)
        if steps != self.cfg.total_steps:  # said only where it moves the total by a few percent
            self.take_steps(deadline, steps, change.describe() if change and deadline.noted(change) else "")

    def take_steps(self, deadline: Deadline, steps: int, why: str) -> None:
        """``steps`` as the run's bound, in the settings its checkpoints record."""
        deadline.follow(self.state.step, steps)  # where this process counted differently from rank 0
        self.resolved = with_steps(self.resolved, steps)
        self.progress.total = steps
        if why and self.world.is_main:
            note(why)


def _train_batches(
    resolved: Resolved, shards: list[str], log: SkipLog, state: TrainState, world: D.World, align: int
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
        stream, data.batch_rows // world.size, data.row_len, pack=data.pack, align=align, split=split
    )
    return prefetch(rows) if prefetch_helps(world.device) else rows
