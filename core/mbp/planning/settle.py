"""What a run trains, settled before its first step: the plan (:mod:`mbp.planning.plan`) as rank 0 made it,
on every process; on resume, as the checkpoint recorded it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mbp.errors import ConfigError
from mbp.planning.patch_plan import PatchPlan
from mbp.planning.plan import StepPlan, plan_run, with_eval_samples, with_steps
from mbp.planning.precision_plan import as_rank_zero_chose, with_precision
from mbp.planning.recorded import (
    recorded_augment,
    recorded_eval_samples,
    recorded_optimizer,
    recorded_precision,
    recorded_steps,
)
from mbp.planning.rows import RowPlan
from mbp.planning.variation import VariationPlan, with_augment
from mbp.resolve import Resolved
from mbp.train import distributed as D
from mbp.train.optim import settled_optimizer
from mbp.train.precision import PrecisionChoice


@dataclass(frozen=True)
class Settled:
    resolved: Resolved
    """The pipeline with every planned setting given: what checkpoints record."""
    plan: StepPlan | None
    """None where the pipeline gives ``train.steps``."""
    precision: PrecisionChoice
    rows: RowPlan | None = None
    patch: PatchPlan | None = None
    variation: VariationPlan | None = None


def settle(resolved: Resolved, train_shards: list[str], eval_shards: list[str], world: D.World) -> Settled:
    """``resolved`` planned from its data and this machine's timings; under several processes, every
    process takes rank 0's precision and steps, which may follow timings."""
    asked = resolved.pipeline.train.precision
    plan = plan_run(settled_optimizer(resolved), train_shards, world.device, eval_shards)
    settled = Settled(plan.resolved, plan.steps, plan.precision.choice, plan.rows, plan.patch, plan.variation)
    if world.size > 1:
        settled = _as_rank_zero(settled, world, asked)
    rows = settled.resolved.pipeline.data.batch_rows
    if rows % world.size:
        raise ConfigError(
            f"data.batch_size {rows} must divide evenly over {world.size} processes: "
            f"set data.batch_size to a multiple of {world.size}"
        )
    return settled


def _as_rank_zero(settled: Settled, world: D.World, asked: str) -> Settled:
    resolved, precision, variation = settled.resolved, settled.precision, settled.variation
    if settled.plan is not None:
        resolved = with_steps(resolved, D.broadcast_int(resolved.pipeline.train.total_steps, world))
        evaluated = D.broadcast_int(resolved.pipeline.data.max_eval_samples or 0, world)
        resolved = with_eval_samples(resolved, evaluated or None)
    if asked == "auto":
        precision = as_rank_zero_chose(precision, world)
        resolved = with_precision(resolved, precision.precision)
    if variation is not None:
        resolved = with_augment(resolved, bool(D.broadcast_int(int(variation.varied), world)))
    return dataclasses.replace(settled, resolved=resolved, precision=precision)


def as_recorded(settled: Settled, document: dict[str, Any], asked: str) -> Settled:
    """``settled`` as the resumed run planned and chose before (``asked``: the precision setting): its
    schedule and held-out samples, its variation, its optimizer (AdamW where it records none) and
    its precision."""
    resolved, precision, variation = settled.resolved, settled.precision, settled.variation
    if settled.plan is not None:
        resolved = with_steps(resolved, recorded_steps(document, resolved.pipeline.train.total_steps))
        resolved = with_eval_samples(resolved, recorded_eval_samples(document))
    if variation is not None:  # as the run varied its samples before, whatever its passes now
        variation = dataclasses.replace(variation, varied=recorded_augment(document))
        resolved = with_augment(resolved, variation.varied)
    resolved = settled_optimizer(resolved, recorded_optimizer(document))
    recorded = recorded_precision(document)
    if asked == "auto" and recorded is not None and recorded != precision.precision:
        precision = PrecisionChoice(recorded, "auto: as the run chose before it was resumed")
        resolved = with_precision(resolved, recorded)
    return dataclasses.replace(settled, resolved=resolved, precision=precision, variation=variation)
