"""The steps a run takes from its data when its pipeline leaves ``train.steps`` unset (rows:
:mod:`mbp.planning.rows`), and the plan of a whole run: rows, precision, steps.

A fixed step count suits one data-set size: 600 steps were 26 passes over 1,500 8x8 digits (held-out
loss rising after 13) but 3 over 4,316 letter glyphs (still learning at the end: 0.948, where 1,200
steps gave 0.98). So the default is counted in passes over the training set, with a floor for small sets
(the best checkpoint by held-out metric is kept, so extra passes cost time, not quality) and a ceiling
in time: the steps that fit the run's budget less its evaluations (:mod:`mbp.planning.budget`) at the
step time measured on this machine, at the run's precision (:mod:`mbp.planning.steptime`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mbp.data.batches import Batch, batches
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog
from mbp.heads import splits_samples
from mbp.model.build import build_model
from mbp.planning.budget import RUN_SECONDS, TRAIN_SECONDS, EvalLoad, ceiling, evaluations, training_seconds
from mbp.planning.constants import FEWEST_STEPS, PASSES
from mbp.planning.patch_plan import PatchPlan, plan_patch
from mbp.planning.precision_plan import PrecisionPlan, plan_precision, with_precision
from mbp.planning.rows import RowPlan, plan_rows, training_order
from mbp.planning.steptime import step_seconds
from mbp.planning.variation import VariationPlan, plan_variation
from mbp.resolve import Resolved

# The ceiling is time: the steps that fit the run's budget (``mbp.planning.budget``) at the step time
# measured on this machine, not a count of arithmetic: 14 TFLOP is 6.5 minutes on a 2-core AMD EPYC
# (AVX2, no AVX512-BF16) and under 3 on a 2-core Intel Xeon with AMX; a measured step follows the
# model, the batches, the precision and the machine: byte-level rows the model skips (``ThinningHead``,
# ``context_weight: 0``) cost nothing, and a machine that multiplies in bf16 trains more steps in the
# same minutes. A measured ceiling can differ by
# a step or two between runs, so a run to be repeated exactly names its steps (``train.steps``).
PROBE_ROWS = 64
"""Rows packed from the stream's first samples to measure how many samples a step holds."""


def with_steps(resolved: Resolved, steps: int) -> Resolved:
    return resolved.with_settings("train", steps=steps)


def with_eval_samples(resolved: Resolved, samples: int | None) -> Resolved:
    """``resolved`` evaluating ``samples`` held-out samples spread over its set (None: all of them)."""
    return resolved.with_settings("data", max_eval_samples=samples)


@dataclass(frozen=True)
class StepProbe:
    per_step: float
    """Samples in one step's rows (all processes and accumulated batches together)."""
    flops: float
    """Floating-point operations of one training step, forward and backward."""
    seconds: float
    """One training step's time on this machine, measured (``mbp.planning.steptime``)."""


@dataclass(frozen=True)
class StepPlan:
    steps: int
    samples: int
    """Training samples counted; at the ceiling, counting stops once it is reached."""
    per_step: float
    """Samples in one step's rows (all processes and accumulated batches together)."""
    capped: bool
    """``PASSES`` would take more than the ceiling; ``samples`` is then where counting stopped."""
    seconds: float = 0.0
    """The measured step time the ceiling was counted from."""
    evaluation: EvalLoad = dataclasses.field(default_factory=EvalLoad)
    """The held-out samples and evaluations whose estimated cost is taken out of the budget."""
    run_seconds: float = RUN_SECONDS
    """The run's budget, evaluation included (``train.minutes``)."""

    @property
    def eval_seconds(self) -> float:
        """The evaluations' estimated cost at the measured step."""
        return self.evaluation.seconds(self.seconds, self.per_step)

    @property
    def train_seconds(self) -> float:
        """Training time the ceiling allows: the run's budget less its evaluations (``budget``)."""
        return training_seconds(self.eval_seconds, self.run_seconds)

    def advice(self) -> str | None:
        """A warning where the held-out set's evaluations crowd out training."""
        return self.evaluation.advice(self.seconds, self.per_step, self.run_seconds) if self.capped else None

    def summary(self) -> dict[str, float | int]:
        return {
            "steps": self.steps,
            "samples": self.samples,
            "samples_per_step": round(self.per_step, 2),
            "step_seconds_measured": round(self.seconds, 4),
            "train_seconds_allowed": round(self.train_seconds, 1),
            "eval_seconds_estimated": round(self.eval_seconds, 1),
            **(
                {"eval_samples": self.evaluation.samples, "eval_samples_of": self.evaluation.whole}
                if self.evaluation.whole
                else {}
            ),
        }

    def describe(self) -> str:
        passes = self.steps * self.per_step / max(1, self.samples)
        timed = f"{self.seconds:.3g} s a step measured"
        if self.capped:
            evaluated = self.evaluation
            costs = (
                f", {evaluated.evaluations} evaluations of {evaluated.describe()} at most "
                f"{self.eval_seconds:.0f} s"
                if evaluated.evaluations and evaluated.samples
                else ""
            )
            return (
                f"{self.steps} steps (the ceiling of a {self.run_seconds / 60:g}-minute run, about "
                f"{self.train_seconds / 60:.1f} minutes of training at {timed}{costs}: {PASSES} passes "
                f"over {self.samples:,}+ samples at about {self.per_step:.0f} a step would take more; "
                "train.minutes gives the run more time)"
            )
        return (
            f"{self.steps} steps ({passes:.1f} passes over {self.samples:,} samples, "
            f"about {self.per_step:.0f} a step; {timed})"
        )


def plan_steps(
    resolved: Resolved,
    shards: list[str],
    align: int,
    device: torch.device | None = None,
    seconds: float | None = None,
    eval_shards: list[str] | None = None,
) -> StepPlan:
    """``PASSES`` over ``shards``, at least ``FEWEST_STEPS`` and at most ``ceiling`` (which wins: steps
    long enough that the floor would outlast the minutes are held to them): the run's budget less what
    evaluating ``eval_shards`` will cost. Reads at most the samples the ceiling needs, and encodes only
    the first ``PROBE_ROWS`` rows' worth."""
    probe = probe_steps(resolved, shards, align, device, seconds)
    per_step = probe.per_step
    run_seconds = resolved.pipeline.train.minutes * 60
    load = eval_load(resolved, eval_shards or [], ceiling(probe.seconds, training_seconds(0.0, run_seconds)))
    if resolved.pipeline.data.max_eval_samples is None:  # the pipeline's own cap is kept as it is
        load = load.fitted(probe.seconds, per_step, run_seconds)
    most = ceiling(probe.seconds, training_seconds(load.seconds(probe.seconds, per_step), run_seconds))
    wanted, samples = passes_steps(shards, per_step, most)
    return StepPlan(min(most, wanted), samples, per_step, wanted > most, probe.seconds, load, run_seconds)


def passes_steps(shards: list[str], per_step: float, most: int) -> tuple[int, int]:
    """The steps of ``PASSES`` over ``shards`` (at least ``FEWEST_STEPS``) and the samples counted:
    counting stops once the passes would take more than ``most`` steps."""
    enough = math.ceil(most * per_step / PASSES) + 1
    samples = sum(1 for _ in itertools.islice(read_samples(shards, SkipLog(quiet=True)), enough))
    return max(FEWEST_STEPS, math.ceil(PASSES * samples / per_step)), samples


def eval_load(resolved: Resolved, eval_shards: list[str], most_steps: int) -> EvalLoad:
    """The held-out samples a run will evaluate (read, not encoded) and how often."""
    if not eval_shards:
        return EvalLoad()
    limit = resolved.pipeline.data.max_eval_samples
    samples = sum(1 for _ in itertools.islice(read_samples(eval_shards, SkipLog(quiet=True)), limit))
    return EvalLoad(samples, evaluations(resolved.pipeline.train.eval_every, most_steps))


def probe_steps(
    resolved: Resolved,
    shards: list[str],
    align: int,
    device: torch.device | None = None,
    seconds: float | None = None,
) -> StepProbe:
    """Samples in one step, from the training stream's own packing of its first samples, what a step
    computes and how long it takes on ``device`` (default CPU). A head that thins training weights
    (``ThinningHead``) is probed again on the rows weighted (and varied) as training weights them;
    other heads' weights do not vary."""
    per_step, probed = _packing(resolved, shards, align)
    if resolved.encoder.thinning is not None:
        probed = list(_probe_batches(resolved, shards, align, augment=True)) or probed
    if not probed:
        return StepProbe(per_step, 0.0, 0.0)
    flops = step_flops(resolved, probed[0]) * resolved.pipeline.train.grad_accum
    if seconds is None:
        seconds = step_seconds(resolved, probed, device or torch.device("cpu"))
    return StepProbe(per_step, flops, seconds)


def samples_per_step(resolved: Resolved, shards: list[str], align: int) -> float:
    """Samples in one step's rows (all processes and accumulated batches together), as the training
    stream packs its first samples."""
    return _packing(resolved, shards, align)[0]


def _packing(resolved: Resolved, shards: list[str], align: int) -> tuple[float, list[Batch]]:
    """Samples a step and the probe's batches (unvaried, unthinned)."""
    data, train = resolved.pipeline.data, resolved.pipeline.train
    rows = samples = 0
    probed: list[Batch] = []  # the batches whose arithmetic is counted and whose steps are timed
    for batch in _probe_batches(resolved, shards, align, augment=False):
        rows += len(batch.rows)
        samples += batch.samples_started
        probed.append(batch)
    per_row = samples / rows if rows else 1.0
    return per_row * data.batch_rows * train.grad_accum, probed


def timing_batches(resolved: Resolved, shards: list[str], align: int) -> list[Batch]:
    """The probe's batches as training weights them (thinned where the head thins)."""
    return list(_probe_batches(resolved, shards, align, augment=resolved.encoder.thinning is not None))


def step_flops(resolved: Resolved, batch: Batch) -> float:
    """Floating-point operations of a training step on ``batch``: the loss's forward counted by torch's
    FlopCounterMode on a model of the pipeline's shapes (fresh weights; torch's random state is left as
    it was), x3 for the backward, which costs about twice the forward in matrix products. The counter
    sees matrix products and attention (the Mamba path's chunked scan is einsums, so it is seen too),
    not elementwise work, which the measured GFLOP/s already pays for."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(resolved.pipeline.model, resolved.components).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.loss(batch.tokens, batch.weights, batch.begins)
    return 3.0 * counter.get_total_flops()


def _probe_batches(resolved: Resolved, shards: list[str], align: int, augment: bool) -> Iterator[Batch]:
    """The training stream's first ``PROBE_ROWS`` rows, in batches as training packs them."""
    data = resolved.pipeline.data
    stream = training_order(resolved, shards, data.row_len, augment=augment)
    split = splits_samples(resolved.head)
    packed = batches(stream, data.batch_rows, data.row_len, pack=data.pack, align=align, split=split)
    for batch, _ in itertools.islice(packed, math.ceil(PROBE_ROWS / data.batch_rows)):
        yield batch


@dataclass(frozen=True)
class RunPlan:
    resolved: Resolved
    """The pipeline with ``data.seq_len`` and ``train.steps`` given or planned: checkpoints keep both."""
    rows: RowPlan | None
    steps: StepPlan | None
    """None where the pipeline gives the value."""
    precision: PrecisionPlan
    variation: VariationPlan | None = None
    """None where the pipeline sets ``data.augment`` or no field's codec leaves it to the run."""
    patch: PatchPlan | None = None
    """None where the pipeline gives the byte-level stage's patch."""


def plan_run(
    resolved: Resolved,
    shards: list[str],
    device: torch.device | None = None,
    eval_shards: list[str] | None = None,
) -> RunPlan:
    """The byte-level stage's patch (rows align to it), rows, then the precision (``auto`` settled by
    timing both where the hardware offers bf16), then steps (which count samples in those rows), then
    whether samples vary (from the passes those steps make), for what the pipeline leaves unset. The
    patch and rows are deterministic; precision and steps at the
    ceiling follow measured step times, so a resumed run takes those, and the variation that follows
    from the steps, from its checkpoint (``Trainer``), not from planning again."""
    device = device or torch.device("cpu")
    planned, patch = plan_patch(resolved, shards)
    planned, rows = plan_rows(planned, shards)
    align = planned.pipeline.model.patch_len
    precision = plan_precision(planned, lambda: timing_batches(planned, shards, align), device)
    planned = with_precision(planned, precision.choice.precision)
    steps = None
    if planned.pipeline.train.steps is None:
        seconds = precision.seconds.get(precision.choice.precision)
        steps = plan_steps(planned, shards, align, device, seconds, eval_shards)
        planned = with_steps(planned, steps.steps)
        if steps.evaluation.whole:  # evaluating all would crowd out training: a spread subset
            planned = with_eval_samples(planned, steps.evaluation.samples)
    given = planned  # the pipeline whose stream is probed, bound before planned is rebound
    per_step = (lambda: steps.per_step) if steps else (lambda: samples_per_step(given, shards, align))
    known = steps.samples if steps and not steps.capped else None  # below the ceiling: counted to the end
    planned, variation = plan_variation(planned, shards, planned.pipeline.train.total_steps, per_step, known)
    return RunPlan(planned, rows, steps, precision, variation, patch)


def preview(resolved: Resolved, shards: list[str]) -> dict[str, Any]:
    """What ``mbp run`` would train on ``shards``: its rows and steps, given by the pipeline or planned."""
    plan = plan_run(resolved, shards)
    pipeline = plan.resolved.pipeline
    rows, steps = pipeline.data.row_len, pipeline.train.total_steps
    return {
        "seq_len": rows,
        "steps": steps,
        "patch": pipeline.model.patches[-1] if pipeline.model.patches else None,
        "planned": [
            name
            for name, part in (("patch", plan.patch), ("seq_len", plan.rows), ("steps", plan.steps))
            if part is not None
        ],
        "describe": ", ".join(
            [
                plan.rows.describe() if plan.rows else f"rows of {rows} tokens (given)",
                plan.steps.describe() if plan.steps else f"{steps} steps (given)",
                *([plan.patch.describe()] if plan.patch else []),
                *([plan.variation.describe()] if plan.variation else []),
            ]
        ),
    }


__all__ = [
    "PROBE_ROWS",
    "TRAIN_SECONDS",
    "RunPlan",
    "StepPlan",
    "StepProbe",
    "ceiling",
    "passes_steps",
    "plan_run",
    "plan_steps",
    "preview",
    "probe_steps",
    "samples_per_step",
    "step_flops",
    "timing_batches",
    "with_steps",
]
