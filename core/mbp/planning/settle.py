"""What a run trains with, settled before its first step: the plan (:mod:`mbp.planning.plan`) as rank 0
made it, on every process; on resume, as the checkpoint recorded it. Each source gives one
``RunSettings``; the Trainer writes it into the pipeline (``RunSettings.applied``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from mbp.config import settled_batch_size
from mbp.errors import ConfigError
from mbp.planning.plan import RunPlan, plan_run
from mbp.planning.precision_plan import as_rank_zero_chose
from mbp.planning.probe import Probe
from mbp.planning.recorded import (
    recorded_augment,
    recorded_eval_samples,
    recorded_optimizer,
    recorded_precision,
    recorded_steps,
)
from mbp.planning.settings import RunSettings
from mbp.resolve import Resolved
from mbp.train import distributed
from mbp.train.optim import settled_optimizer
from mbp.train.precision import PrecisionChoice


def settle(resolved: Resolved, probe: Probe, world: distributed.World) -> RunPlan:
    """``resolved`` planned from its data (``probe``) and this machine's timings; under several
    processes, every process takes rank 0's precision and steps, which may follow timings."""
    asked = resolved.pipeline.train.precision
    plan = plan_run(settled_optimizer(resolved), probe, world.device)
    if world.size > 1:
        plan = plan.settled(agreed(plan, world, asked))
    rows = settled_batch_size(resolved.pipeline.data)
    if rows % world.size:
        raise ConfigError(
            f"data.batch_size {rows} must divide evenly over {world.size} processes: "
            f"set data.batch_size to a multiple of {world.size}"
        )
    return plan


def agreed(plan: RunPlan, world: distributed.World, asked: str) -> RunSettings:
    """``plan``'s settings as rank 0 planned them, where they follow timings (steps, held-out samples
    and precision ``auto``) or the steps (variation)."""
    settings = plan.settings
    if plan.steps is not None:
        steps = distributed.broadcast_int(settings.steps, world)
        evaluated = distributed.broadcast_int(settings.eval_samples or 0, world)
        settings = dataclasses.replace(settings, steps=steps, eval_samples=evaluated or None)
    if asked == "auto":
        settings = dataclasses.replace(settings, precision=as_rank_zero_chose(settings.precision, world))
    if plan.variation is not None:
        varied = bool(distributed.broadcast_int(int(plan.variation.varied), world))
        settings = dataclasses.replace(settings, augment=varied)
    return settings


def as_recorded(plan: RunPlan, resolved: Resolved, document: dict[str, Any], asked: str) -> RunPlan:
    """``plan`` as the resumed run planned and chose before (``asked``: the precision setting): its
    schedule and held-out samples, its variation, its optimizer (AdamW where it records none; checked
    against ``resolved``'s strategy) and its precision."""
    settings, variation = plan.settings, plan.variation
    if plan.steps is not None:
        steps = recorded_steps(document, settings.steps)
        settings = dataclasses.replace(settings, steps=steps, eval_samples=recorded_eval_samples(document))
    if variation is not None:  # as the run varied its samples before, whatever its passes now
        variation = dataclasses.replace(variation, varied=recorded_augment(document))
        settings = dataclasses.replace(settings, augment=variation.varied)
    optimizer = settled_optimizer(resolved, recorded_optimizer(document)).pipeline.train.optimizer
    settings = dataclasses.replace(settings, optimizer=optimizer)
    recorded = recorded_precision(document)
    if asked == "auto" and recorded is not None and recorded != settings.precision.precision:
        precision = PrecisionChoice(recorded, "auto: as the run chose before it was resumed")
        settings = dataclasses.replace(settings, precision=precision)
    return dataclasses.replace(plan, variation=variation).settled(settings)
