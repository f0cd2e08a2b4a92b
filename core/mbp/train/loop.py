"""``mbp run``: train and evaluate a pipeline, with exact resume."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

from mbp.config import TrainConfig, settled_batch_size
from mbp.errors import warn
from mbp.model.build import build_model
from mbp.model.checkpoint_files import checkpoint_document
from mbp.model.decoder import MultiscaleDecoder
from mbp.outdir import check_writable
from mbp.planning.deadline import deadline_of
from mbp.planning.plan import RunPlan
from mbp.planning.probe import Probe
from mbp.planning.recorded import check_patches, recorded_optimizer, resume_changes
from mbp.planning.recount import NewTotal, Recount
from mbp.planning.settle import as_recorded, settle
from mbp.resolve import Resolved
from mbp.train import distributed
from mbp.train.allocator import keep_freed_memory
from mbp.train.cadence import Cadence
from mbp.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from mbp.train.evaluate import evaluate, held_out_batches
from mbp.train.health import agreed_finite, finite_states
from mbp.train.init import init_from as load_initial_weights
from mbp.train.optim import describe_optimizer, make_optimizer
from mbp.train.record import RunRecord
from mbp.train.report import Progress, run_summary
from mbp.train.rundir import RunRequest, check_belongs, prepare_out, remove_leftovers, resume_point
from mbp.train.schedule import lr_factor
from mbp.train.step import LossStep, train_step
from mbp.train.stream import TrainingStream
from mbp.train.watch import DivergedError, diverged, length_advice, note


def run(resolved: Resolved, request: RunRequest) -> dict[str, Any]:
    """Train and evaluate ``resolved`` as its pipeline says; return the summary ``mbp run --json`` prints."""
    world = distributed.init_world()
    try:
        return Trainer(resolved, request, world).run()
    finally:
        distributed.shutdown(world)


class Trainer:
    """One training run: the model, its optimizer and data, and what gets logged and saved."""

    checkpoint: Path | None

    def __init__(self, resolved: Resolved, request: RunRequest, world: distributed.World) -> None:
        self.started = time.perf_counter()  # rows carry seconds since here: planning shows as the first gap
        self.request, self.world, self.out = request, world, request.out
        self.asked = resolved.pipeline.train  # as given, before planning settles precision and optimizer
        if world.device.type == "cpu":
            keep_freed_memory()
        self.probe = Probe(request.train_shards, request.eval_shards)
        self._take(settle(resolved, self.probe, world), resolved)
        self._setup_model()
        self.state, self.checkpoint = TrainState(0, 0, 0, 0, 0), None
        optim_state, resumed_optimizer = self._resume() if request.resume else (None, None)
        self._setup_optimizer(optim_state)
        if world.is_main:
            self._announce(resumed_optimizer)
        self._setup_data()

    @property
    def cfg(self) -> TrainConfig:
        """The run's training settings, as settled; the run's bound is ``settings.steps``."""
        return self.resolved.pipeline.train

    def _take(self, plan: RunPlan, resolved: Resolved) -> None:
        """``plan``'s settings as the run's, written into ``resolved``'s pipeline: the one place a run's
        settings reach it."""
        self.plan, self.settings = plan, plan.settings
        self.resolved = plan.settings.applied(resolved)

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

    def _resume(self) -> tuple[dict[str, Any], str | None]:
        """The newest checkpoint's weights and state, and the settings it recorded; its optimizer state
        and the optimizer it recorded."""
        resolved, main = self.resolved, self.world.is_main
        checkpoint = resume_point(self.out, take_intact=self.request.take_intact, main=main)
        document = checkpoint_document(checkpoint, training=True)
        check_patches(checkpoint, document, resolved.pipeline)
        check_belongs(checkpoint, resolved.name, resolved.pipeline, document, self.model)
        self._take(as_recorded(self.plan, resolved, document, self.asked.precision), resolved)
        changes = resume_changes(checkpoint, document, self.resolved.pipeline, self.settings.steps)
        if changes and main:
            warn(changes)
        self.state, optim_state = load_checkpoint(checkpoint, self.model)
        self.checkpoint = checkpoint
        return optim_state, recorded_optimizer(document)

    def _setup_optimizer(self, optim_state: dict[str, Any] | None) -> None:
        world, cfg, units = self.world, self.cfg, self.model.sharding_units()
        self.wrapped = distributed.wrap(LossStep(self.model), world, cfg.strategy, units)
        self.optimizer = make_optimizer(self.model, cfg)
        if optim_state is not None:
            distributed.load_optimizer(self.model, self.optimizer, optim_state, world, cfg.strategy)

    def _announce(self, resumed_optimizer: str | None) -> None:
        resolved, cfg = self.resolved, self.cfg
        optimizer = describe_optimizer(self.optimizer, cfg, self.asked.optimizer, resumed_optimizer)
        parameters = sum(p.numel() for p in self.model.parameters()) / 1e6
        note(
            f"training {resolved.name}: precision {self.settings.precision.describe()}, "
            f"{self.world.device.type}, {parameters:.2f}M parameters, "
            f"dropout {resolved.pipeline.model.dropout or 0:g}, {optimizer}, "
            + self.plan.describe(settled_batch_size(resolved.pipeline.data))
        )
        if self.plan.steps is not None and not self.request.resume and (advice := self.plan.steps.advice()):
            warn(advice)

    def _setup_data(self) -> None:
        resolved, request, world, out = self.resolved, self.request, self.world, self.out
        align = self.model.pack_align
        self.stream = TrainingStream(resolved, request.train_shards, self.state, world, align)
        evals = request.eval_shards
        self.evals = held_out_batches(resolved, evals, align, quiet=not world.is_main) if evals else []
        self.deadline, self.recount = None, None  # a resumed run keeps its recorded steps: its clock
        if self.plan.steps is not None and not request.resume:  # started with the resume
            self.deadline = deadline_of(self.plan.steps, self.cfg.eval_every, self.probe, self.started)
            self.recount = Recount(self.deadline, world)
        self.cadence = Cadence(evaluates=bool(self.evals), deadline=self.deadline)
        resume_step = self.state.step if request.resume else None
        self.record = RunRecord(resolved, out, resume_step, world.is_main, self.started)

    def run(self) -> dict[str, Any]:
        self.progress = Progress(self.settings.steps, self.state.step)
        self.wrapped.train()
        try:
            while self.state.step < self.settings.steps:
                self.after(self.timed_step())
        finally:
            self.stream.close()  # stops the prefetch thread before anything else shuts down
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
        step, total, recount = self.state.step, self.settings.steps, self.recount
        due = self.cadence.due(step, total, self.cfg)
        if "log" in due:
            self.record.log_train(step, loss, self.optimizer.param_groups[0]["lr"], self.state.samples_seen)
        paused = self.record.paused(self.evaluate) if "evaluate" in due else 0.0
        if "recount" in due and recount is not None:
            self.take_steps(recount.at_evaluation(step, total, paused))
        if "save" in due:
            self.record.paused(self.save)
        if "refit" in due and recount is not None:
            self.take_steps(recount.at_log(step, total))

    def summary(self) -> dict[str, Any]:
        """What ``mbp run --json`` prints, after saying what the run's lengths and curve advise."""
        record, settings, steps = self.record, self.settings, self.plan.steps
        log = self.stream.whole_run_log()
        minutes = self.cfg.minutes if steps is not None and steps.capped else None
        advice = length_advice(log.lengths, settings.row_len, self.model.patch_len, log.reasons["too long"])
        unfinished = record.learning.at_end(record.best.step, settings.steps, minutes)
        if advice and self.world.is_main:
            warn(advice)
        if unfinished and self.world.is_main:
            note(unfinished)
        summary = run_summary(
            self.resolved, self.state, log, record.last_eval, self.checkpoint, self.out, record.metrics
        )
        summary["precision"] = settings.precision.precision
        summary["best"] = record.best.describe()
        changes = self.deadline.summary() if self.deadline else {}
        return summary | self.plan.summary(bool(self.resolved.pipeline.data.augment), changes)

    def step(self) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` batches; returns the mean loss and the bytes trained."""
        cfg, state, world = self.cfg, self.state, self.world
        factor = lr_factor(
            state.step, warmup=cfg.warmup_steps, total=self.settings.steps, min_ratio=cfg.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        drawn = [self.stream.draw() for _ in range(cfg.grad_accum)]
        result = train_step(
            self.wrapped, self.model, self.optimizer, drawn, self.settings.precision, cfg.clip, self.finite
        )
        state.step += 1
        state.samples_skipped = self.stream.log.samples_skipped
        tokens = result.tokens * world.size
        self.record.trained(tokens)
        return result.loss, tokens

    def finite(self, loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, float]:
        """The step's loss and norm, agreed finite by every process before the optimizer applies them."""
        return agreed_finite(loss, norm, self.world, functools.partial(self.stop, self.state.step + 1))

    def stop(self, step: int, what: str) -> DivergedError:
        """The error that stops the run at ``step`` where ``what`` is not finite."""
        return diverged(step, what, self.checkpoint, self.cfg.lr)

    def evaluate(self) -> None:
        started = time.perf_counter()
        result = evaluate(self.model, self.evals, self.resolved.head, precision=self.settings.precision)
        seconds = time.perf_counter() - started
        self.record.evaluated(self.state.step, result, seconds, self.model, self.resolved)

    def save(self) -> None:
        cfg, world, state, pipeline = self.cfg, self.world, self.state, self.resolved.pipeline
        stop = functools.partial(self.stop, state.step)
        states = finite_states(self.model, self.optimizer, world, cfg.strategy, stop)
        self.stream.gather(state)
        if world.is_main:
            keep, name = cfg.keep_checkpoints, self.resolved.name
            self.checkpoint = save_checkpoint(self.out, *states, state, name, pipeline, keep)
        distributed.barrier(world)

    def take_steps(self, change: NewTotal | None) -> None:
        """A recount's total as the run's bound, in its settings and so in what its checkpoints record."""
        if change is None:
            return
        self.settings = self.settings.with_steps(change.steps)
        self.resolved = self.settings.applied(self.resolved)
        self.progress.total = change.steps
        if change.why and self.world.is_main:
            note(change.why)
