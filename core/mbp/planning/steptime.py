"""How long a training step takes on this machine: what a planned run's ceiling is counted in.

A ceiling counted in arithmetic (14 TFLOP a run) assumed one machine's speed: on the 2-core AMD EPYC it
was written for, the step ran at 37-40 GFLOP/s, about 6.5 minutes of training; on a 2-core Xeon with
AMX the same plans ran at 79 GFLOP/s in fp32 and 122 in bf16 (letter glyphs), and finished in under
three minutes, leaving most of the time a user would give them unused. So the ceiling is now time,
measured: a few real steps of the run's own model, batches and precision, before training.
"""

from __future__ import annotations

import statistics
import time

import torch

from mbp.data.batches import Batch
from mbp.model.build import build_model
from mbp.resolve import Resolved
from mbp.train.optim import make_optimizer
from mbp.train.precision import choose_precision
from mbp.train.step import LossStep, train_step

TIMED_STEPS = 3
"""Batches timed, each after an untimed step on the same batch: the first step at a new shape allocates
memory and makes oneDNN's bf16 kernels for it, and thinned batches vary in shape. Timing each batch's
first step (two warm-up steps, then three batches) read 84 ms a step where 28x28 glyph training ran at
74 ms, so a run planned for 6 minutes trained for 5.3."""


def step_seconds(resolved: Resolved, batches: list[Batch], device: torch.device) -> float:
    """Median seconds of one optimizer step (``grad_accum`` batches) of ``resolved``'s model on ``batches``
    (cycled), at the precision the run will use on ``device``. Fresh weights; torch's random state is
    left as it was."""
    train = resolved.pipeline.train
    precision = choose_precision(train.precision, device)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        model = build_model(resolved.pipeline.model, resolved.components).to(device).train()
        optimizer, loss_of = make_optimizer(model, train), LossStep(model)

        def step(index: int) -> float:
            start = time.perf_counter()
            parts = range(index * train.grad_accum, (index + 1) * train.grad_accum)
            micro_batches = [batches[part % len(batches)] for part in parts]
            train_step(loss_of, model, optimizer, micro_batches, precision, train.clip)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        seconds = []
        for index in range(TIMED_STEPS):
            step(index)  # this batch's shapes, warmed up
            seconds.append(step(index))
    return statistics.median(seconds)
