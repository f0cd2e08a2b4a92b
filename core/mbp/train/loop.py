"""``mbp run``: train and evaluate a pipeline, with exact resume."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mbp.data.batches import Batch, Position, batches, encoded_stream
from mbp.data.read import expand_shards
from mbp.data.skips import SkipLog
from mbp.errors import CheckpointError, DataError, MbpError
from mbp.model.build import build_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.plugins import get_platform
from mbp.session import Resolved
from mbp.train import distributed as D
from mbp.train.checkpoint import TrainState, list_checkpoints, load_checkpoint, save_checkpoint
from mbp.train.evaluate import evaluate
from mbp.train.report import MetricsLog, Progress, plot
from mbp.train.schedule import lr_factor


class OutputError(MbpError):
    """The output folder cannot be written."""


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mbp-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"--out {out}: cannot write there ({error.strerror or error})") from None


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "start_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "start_tokens" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # the fused kernel updates every parameter in one pass (CPU and CUDA); identical arithmetic
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


def eval_batches(resolved: Resolved, shards: list[str], log: SkipLog) -> list[Batch]:
    data = resolved.pipeline.data
    stream = encoded_stream(shards, resolved.encoder, data.seq_len, log, repeat=False)
    if data.max_eval_samples:
        stream = itertools.islice(stream, data.max_eval_samples)
    return [b for b, _ in batches(stream, data.batch_size, data.seq_len)]


def run(
    resolved: Resolved, out: Path, *, resume: bool, train_shards: list[str], eval_shards: list[str]
) -> dict[str, Any]:
    world = D.init_world()
    pipeline, cfg, data = resolved.pipeline, resolved.pipeline.train, resolved.pipeline.data
    if world.is_main:
        check_writable(out)
    if data.batch_size % world.size:
        raise DataError(f"data.batch_size {data.batch_size} must divide evenly over {world.size} processes")
    torch.manual_seed(cfg.seed)
    model: MultiscaleDecoder = build_model(pipeline.model, get_platform().components).to(world.device)
    if data.seq_len % model.patch_len:
        raise DataError(
            f"data.seq_len {data.seq_len} must be a multiple of the patch length {model.patch_len}"
        )
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    state = TrainState(0, 0, 0, 0, 0)
    existing = list_checkpoints(out)
    if resume and existing:
        state, _ = load_checkpoint(existing[-1], model, optimizer)
    elif resume:
        raise CheckpointError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    wrapped = D.wrap(LossStep(model), world, cfg.strategy)
    log = SkipLog(quiet=not world.is_main)
    log.samples_skipped = state.samples_skipped
    train = _train_batches(resolved, train_shards, log, state, world)
    evals = eval_batches(resolved, eval_shards, SkipLog(quiet=True)) if eval_shards else []
    metrics = MetricsLog(out / "metrics.jsonl", append=resume) if world.is_main else None
    if metrics and resume:
        metrics.truncate_after(state.step)
    progress = Progress(cfg.steps, state.step)
    last_eval: dict[str, Any] = {}
    checkpoint: Path | None = existing[-1] if resume and existing else None
    wrapped.train()
    while state.step < cfg.steps:
        t0 = time.perf_counter()
        loss_sum, tokens = 0.0, 0
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(
                state.step, warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio
            )
        optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.grad_accum):
            batch, position = next(train)
            ids, weights = batch.tokens.to(world.device), batch.weights.to(world.device)
            with torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = wrapped(ids, weights)
            (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) / cfg.grad_accum
            tokens += batch.num_tokens
            state.samples_seen += len(batch.samples) * world.size
            state.epoch, state.consumed = position.epoch, position.consumed
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        state.step += 1
        state.samples_skipped = log.samples_skipped
        progress.update(state.step, loss_sum, tokens * world.size / (time.perf_counter() - t0))
        if metrics and (state.step % cfg.log_every == 0 or state.step == cfg.steps):
            metrics.write(
                {
                    "kind": "train",
                    "step": state.step,
                    "loss": loss_sum,
                    "train_bpb": loss_sum / 0.6931471805599453,
                    "lr": optimizer.param_groups[0]["lr"],
                    "samples_seen": state.samples_seen,
                }
            )
        if evals and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
            last_eval = evaluate(model, evals, resolved.head, bf16=cfg.bf16)
            if metrics:
                metrics.write(
                    {
                        "kind": "eval",
                        "step": state.step,
                        "eval_bpb": last_eval.get("bpb"),
                        **{k: v for k, v in last_eval.items() if k != "confusion"},
                    }
                )
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            if world.is_main:
                checkpoint = save_checkpoint(
                    out, model, optimizer, state, resolved.name, pipeline, cfg.keep_checkpoints
                )
            D.barrier(world)
    progress.done()
    summary = _summary(resolved, state, log, last_eval, checkpoint, out, metrics)
    D.shutdown(world)
    return summary


class LossStep(torch.nn.Module):
    """The model's loss as a forward(), so DDP and FSDP hooks see it and synchronise gradients."""

    def __init__(self, model: MultiscaleDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids, weights).loss


def _train_batches(
    resolved: Resolved, shards: list[str], log: SkipLog, state: TrainState, world: D.World
) -> Iterator[tuple[Batch, Position]]:
    data, cfg = resolved.pipeline.data, resolved.pipeline.train
    stream = encoded_stream(
        shards,
        resolved.encoder,
        data.seq_len,
        log,
        seed=cfg.seed,
        shuffle_buffer=data.shuffle_buffer,
        start=Position(state.epoch, state.consumed),
        rank=world.rank,
        world=world.size,
    )
    return batches(stream, data.batch_size // world.size, data.seq_len, pack=data.pack)


def _summary(
    resolved: Resolved,
    state: TrainState,
    log: SkipLog,
    last_eval: dict[str, Any],
    checkpoint: Path | None,
    out: Path,
    metrics: MetricsLog | None,
) -> dict[str, Any]:
    plot_path = None
    if metrics:
        metrics.close()
        plot_path = plot(metrics.rows, out / "metrics.png") if metrics.rows else None
    named = {f"eval_{k}" if k == "bpb" else k: v for k, v in last_eval.items()}
    return {
        "pipeline": resolved.name,
        "steps": state.step,
        "samples_seen": state.samples_seen,
        "samples_skipped": log.samples_skipped,
        "metrics": named,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "metrics_file": str(out / "metrics.jsonl"),
        "plot": str(plot_path) if plot_path else None,
    }


__all__ = ["OutputError", "expand_shards", "run"]
