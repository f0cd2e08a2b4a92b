"""``mbp run``: train and evaluate a pipeline, with exact resume."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mbp.data.batches import Batch, Position, batches, encoded_stream, prefetch, prefetch_helps
from mbp.data.skips import SkipLog
from mbp.errors import ConfigError
from mbp.heads import splits_samples
from mbp.model.build import build_model
from mbp.model.checkpoint_files import checkpoint_document
from mbp.model.decoder import MultiscaleDecoder
from mbp.outdir import check_writable
from mbp.resolve import Resolved
from mbp.sinks import open_sinks
from mbp.train import distributed as D
from mbp.train.allocator import keep_freed_memory
from mbp.train.checkpoint import TrainState, first_nonfinite, load_checkpoint, save_checkpoint
from mbp.train.deadline import Deadline, deadline_of
from mbp.train.evaluate import evaluate, held_out_batches
from mbp.train.init import init_from as load_initial_weights
from mbp.train.optim import describe_optimizer, make_optimizer, settled_optimizer
from mbp.train.plan import plan_run, with_eval_samples, with_steps
from mbp.train.precision import PrecisionChoice
from mbp.train.precision_plan import as_rank_zero_chose, with_precision
from mbp.train.recorded import (
    recorded_augment,
    recorded_eval_samples,
    recorded_optimizer,
    recorded_precision,
    recorded_steps,
    resume_changes,
)
from mbp.train.report import MetricsLog, Progress, run_summary
from mbp.train.rundir import check_belongs, prepare_out, remove_leftovers, resume_point
from mbp.train.schedule import lr_factor
from mbp.train.variation import with_augment
from mbp.train.watch import (
    BestKeeper,
    LearningWatch,
    PaddingWatch,
    diverged,
    length_advice,
    note,
    selection_of,
    warn,
)


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

    def __init__(self, resolved: Resolved, request: RunRequest, world: D.World) -> None:
        self.started = time.perf_counter()  # rows carry seconds since here: planning shows as the first gap
        out, resume = request.out, request.resume
        if world.device.type == "cpu":
            keep_freed_memory()
        setting = resolved.pipeline.train.precision
        asked_optimizer = resolved.pipeline.train.optimizer
        plan = plan_run(settled_optimizer(resolved), request.train_shards, world.device, request.eval_shards)
        resolved, self.rows, self.plan = plan.resolved, plan.rows, plan.steps
        self.variation, self.patch = plan.variation, plan.patch
        self.precision = plan.precision.choice
        if world.size > 1:  # precision and steps may follow timings: every process takes rank 0's
            if self.plan is not None:
                resolved = with_steps(resolved, D.broadcast_int(resolved.pipeline.train.total_steps, world))
                evaluated = D.broadcast_int(resolved.pipeline.data.max_eval_samples or 0, world)
                resolved = with_eval_samples(resolved, evaluated or None)
            if setting == "auto":
                self.precision = as_rank_zero_chose(self.precision, world)
                resolved = with_precision(resolved, self.precision.precision)
            if self.variation is not None:
                resolved = with_augment(resolved, bool(D.broadcast_int(int(self.variation.varied), world)))
        self.resolved, self.out, self.world = resolved, out, world
        self.cfg, data = resolved.pipeline.train, resolved.pipeline.data
        if data.batch_rows % world.size:
            raise ConfigError(
                f"data.batch_size {data.batch_rows} must divide evenly over {world.size} processes: "
                f"set data.batch_size to a multiple of {world.size}"
            )
        torch.manual_seed(self.cfg.seed)
        components = resolved.components
        self.model: MultiscaleDecoder = build_model(resolved.pipeline.model, components)
        if request.init_from is not None and not resume:
            load_initial_weights(request.init_from, self.model, resolved.pipeline.model)
        # only now: --overwrite may remove the checkpoint the initial weights come from
        prepare_out(out, resume=resume, overwrite=request.overwrite, main=world.is_main)
        if world.is_main:
            check_writable(out)
            remove_leftovers(out)
        self.model.to(world.device)
        if data.row_len % self.model.patch_len:
            raise ConfigError(
                f"data.seq_len {data.row_len} must be a multiple of the patch length {self.model.patch_len}"
            )
        self.state = TrainState(0, 0, 0, 0, 0)
        optim_state, resumed_optimizer = None, None
        self.checkpoint: Path | None = None
        if resume:
            self.checkpoint = resume_point(out, take_intact=request.take_intact, main=world.is_main)
            document = checkpoint_document(self.checkpoint, training=True)
            check_belongs(self.checkpoint, resolved.name, resolved.pipeline, document, self.model)
            if self.plan is not None:  # the schedule and held-out samples the run started with
                resolved = with_steps(resolved, recorded_steps(document, resolved.pipeline.train.total_steps))
                resolved = with_eval_samples(resolved, recorded_eval_samples(document))
            if self.variation is not None:  # as the run varied its samples before, whatever its passes now
                varied = recorded_augment(document)
                self.variation = dataclasses.replace(self.variation, varied=varied)
                resolved = with_augment(resolved, varied)
            # its optimizer state belongs to the optimizer it recorded (AdamW where it records none)
            resumed_optimizer = recorded_optimizer(document)
            resolved = settled_optimizer(resolved, resumed_optimizer)
            recorded = recorded_precision(document)
            if setting == "auto" and recorded is not None and recorded != self.precision.precision:
                self.precision = PrecisionChoice(recorded, "auto: as the run chose before it was resumed")
                resolved = with_precision(resolved, recorded)
            self.resolved, self.cfg = resolved, resolved.pipeline.train
            changes = resume_changes(self.checkpoint, document, resolved.pipeline)
            if changes and world.is_main:
                warn(changes)
            self.state, optim_state = load_checkpoint(self.checkpoint, self.model)
        if self.plan is not None:
            self.plan = dataclasses.replace(self.plan, steps=self.cfg.total_steps)
        self.deadline = (  # a resumed run's clock started with the resume: it keeps its recorded steps
            deadline_of(self.plan, self.cfg.eval_every, request.train_shards, self.started)
            if self.plan is not None and not resume
            else None
        )
        self.wrapped = D.wrap(LossStep(self.model), world, self.cfg.strategy)
        self.optimizer = make_optimizer(self.model, self.cfg)
        if optim_state is not None:
            D.load_optimizer(self.model, self.optimizer, optim_state, world, self.cfg.strategy)
        if world.is_main:
            rows = resolved.pipeline.data.batch_rows
            optimizer = describe_optimizer(self.optimizer, self.cfg, asked_optimizer, resumed_optimizer)
            note(
                f"training {resolved.name}: precision {self.precision.describe()}, {world.device.type}, "
                f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
                f"dropout {resolved.pipeline.model.dropout or 0:g}, {optimizer}, "
                f"{self.plan.describe() if self.plan else f'{self.cfg.total_steps} steps'}, "
                f"{rows} row{'s' if rows > 1 else ''} a step"
                + (f", {self.rows.describe()}" if self.rows else "")
                + (f", {self.patch.describe()}" if self.patch else "")
                + (f", {self.variation.describe()}" if self.variation else "")
            )
            advice = self.plan.advice() if self.plan is not None and not resume else None
            if advice:
                warn(advice)
        self.log = SkipLog(quiet=not world.is_main)
        self.log.samples_skipped = self.state.samples_skipped
        align = self.model.patch_len
        self.train = _train_batches(resolved, request.train_shards, self.log, self.state, world, align)
        evals = request.eval_shards
        self.evals = held_out_batches(resolved, evals, align, quiet=not world.is_main) if evals else []
        resume_step = self.state.step if resume else None
        self.metrics = MetricsLog(out / "metrics.jsonl", resume_step) if world.is_main else None
        self.sinks = open_sinks(self.cfg.sinks, components, out, resume_step) if world.is_main else []
        self.best = BestKeeper(out, *selection_of(resolved.head))
        self.learning = LearningWatch(self.best.path)
        self.padding = PaddingWatch(data.row_len, data.pack)
        self.last_train_bpb: float | None = None
        self.last_eval: dict[str, Any] = {}
        # throughput window: bytes trained since the last log line, over wall time minus eval and saving
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def run(self) -> dict[str, Any]:
        state = self.state
        progress = Progress(self.cfg.total_steps, state.step)
        self.wrapped.train()
        try:
            while state.step < self.cfg.total_steps:
                cfg, started = self.cfg, time.perf_counter()
                loss, tokens = self.step()
                seconds = time.perf_counter() - started
                if self.deadline is not None:
                    self.deadline.stepped(seconds)
                progress.update(state.step, loss, tokens / seconds)
                last = state.step == cfg.total_steps
                if state.step % cfg.log_every == 0 or last:
                    self.log_train(loss)
                deadline, every = self.deadline, cfg.evaluate_every
                pausing = (
                    deadline.pauses_at(state.step, cfg.total_steps, every)
                    if deadline
                    else state.step % every == 0
                )
                evaluating = bool(self.evals) and (pausing or last)
                saving = state.step % cfg.checkpoint_every == 0 if cfg.checkpoint_every else pausing
                paused = self.paused(self.evaluate) if evaluating else 0.0
                if pausing and deadline is not None and deadline.due(state.step, cfg.total_steps):
                    # before the save, so that its checkpoint records the steps
                    self.count_again(deadline, paused)
                    progress.total, saving = self.cfg.total_steps, True
                if saving or last:
                    self.paused(self.save)
                elif deadline is not None and state.step % cfg.log_every == 0:
                    self.refit(deadline, progress)
        finally:
            self.train.close()  # stops the prefetch thread before anything else shuts down
            for sink in self.sinks:
                sink.close()
        progress.done()
        data = self.resolved.pipeline.data
        skipped = self.log.reasons["too long"]
        advice = length_advice(self.log.lengths, data.row_len, self.model.patch_len, skipped)
        if advice and self.world.is_main:
            warn(advice)
        capped = self.plan is not None and self.plan.capped
        cfg = self.cfg
        unfinished = self.learning.at_end(self.best.step, cfg.total_steps, cfg.minutes if capped else None)
        if unfinished and self.world.is_main:
            note(unfinished)
        summary = run_summary(
            self.resolved, state, self.log, self.last_eval, self.checkpoint, self.out, self.metrics
        )
        summary["precision"] = self.precision.precision
        summary["best"] = self.best.describe()
        if self.rows is not None:
            summary["row_plan"] = self.rows.summary()
        if self.variation is not None:
            summary["variation"] = self.variation.summary(bool(self.resolved.pipeline.data.augment))
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
        self.optimizer.zero_grad(set_to_none=True)
        losses, tokens = [], 0
        for _ in range(cfg.grad_accum):
            batch, position = next(self.train)
            ids, weights = batch.tokens.to(world.device), batch.weights.to(world.device)
            begins = batch.begins.to(world.device)
            with self.precision.autocast(world.device):
                loss = self.wrapped(ids, weights, begins)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.detach().float())
            tokens += batch.num_tokens * world.size
            if world.is_main:
                self.padding.observe(batch.num_tokens, batch.tokens.numel())
            state.samples_seen += batch.samples_started * world.size
            state.epoch, state.consumed, state.taken = position.epoch, position.consumed, position.taken
        loss_sum = self.finite(torch.stack(losses).mean(), D.grad_norm(self.model, cfg.clip))
        self.optimizer.step()
        state.step += 1
        state.samples_skipped = self.log.samples_skipped
        self.window_tokens += tokens
        return loss_sum, tokens

    def finite(self, loss: torch.Tensor, norm: torch.Tensor) -> float:
        """The step's loss, read with its gradient norm in the step's one transfer from the device; a
        non-finite one on any process stops every process before the optimizer applies it."""
        health = torch.stack([loss, norm.float()])
        agreed = D.all_reduce_sum(health.clone(), self.world) if self.world.size > 1 else health
        values = torch.cat([health, agreed]).tolist()
        if not all(map(math.isfinite, values)):
            what = f"loss {values[0]:g}, gradient norm {values[1]:g}"
            raise diverged(self.state.step + 1, what, self.checkpoint, self.cfg.lr)
        return values[0]

    def log_train(self, loss: float) -> None:
        self.last_train_bpb = loss / math.log(2)
        self.write(
            {
                "kind": "train",
                "step": self.state.step,
                "loss": loss,
                "train_bpb": self.last_train_bpb,
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_seen": self.state.samples_seen,
                "bytes_per_s": self.window_tokens / (time.perf_counter() - self.window_start),
            }
        )
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def write(self, row: dict[str, Any]) -> None:
        row["elapsed_s"] = round(time.perf_counter() - self.started, 3)
        if self.metrics:
            self.metrics.write(row)
        for sink in self.sinks:
            sink.write(row)

    def evaluate(self) -> None:
        started = time.perf_counter()
        self.last_eval = evaluate(self.model, self.evals, self.resolved.head, precision=self.precision)
        shown = {k: v for k, v in self.last_eval.items() if k != "confusion"}
        seconds = round(time.perf_counter() - started, 3)
        row = {"kind": "eval", "step": self.state.step, "eval_bpb": self.last_eval.get("bpb"), **shown}
        self.write({**row, "eval_seconds": seconds})
        if self.world.is_main:
            resolved = self.resolved
            self.best.offer(self.state.step, self.last_eval, self.model, resolved.name, resolved.pipeline)
            self.learning.observe(self.state.step, self.last_eval.get("loss_bpb"), self.last_train_bpb)

    def save(self) -> None:
        model_state, optim_state = D.full_states(self.model, self.optimizer, self.world, self.cfg.strategy)
        bad = first_nonfinite(model_state, optim_state) if self.world.is_main else None
        if D.broadcast_int(int(bad is not None), self.world):  # rank 0 holds the full states
            raise diverged(
                self.state.step, f"{bad or 'a tensor'} is not finite", self.checkpoint, self.cfg.lr
            )
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

    def refit(self, deadline: Deadline, progress: Progress) -> None:
        """The steps that fit the budget at the run's pace since its last count; rank 0's decision."""
        change = deadline.refit(self.state.step, self.cfg.total_steps, time.perf_counter())
        steps = D.broadcast_int(change.steps if change else self.cfg.total_steps, self.world)
        if steps != self.cfg.total_steps:  # said only where it moves the total by a few percent
            self.take_steps(deadline, steps, change.describe() if change and deadline.noted(change) else "")
            progress.total = steps

    def take_steps(self, deadline: Deadline, steps: int, why: str) -> None:
        deadline.follow(self.state.step, steps)  # where this process counted differently from rank 0
        self.resolved = with_steps(self.resolved, steps)
        self.cfg = self.resolved.pipeline.train
        if why and self.world.is_main:
            note(why)

    def paused(self, work: Callable[[], None]) -> float:
        """Run work that is not training and keep it out of the throughput window; its seconds."""
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        self.window_start += seconds
        return seconds


class LossStep(torch.nn.Module):
    """The model's loss as a forward(), so DDP and FSDP hooks see it and synchronise gradients."""

    def __init__(self, model: MultiscaleDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, begins: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids, weights, begins).loss


def _train_batches(
    resolved: Resolved, shards: list[str], log: SkipLog, state: TrainState, world: D.World, align: int
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
