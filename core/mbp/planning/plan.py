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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbp.boundaries import patch_starts
from mbp.planning.boundary_plan import BoundaryPlan, given_boundaries, with_planned_boundaries
from mbp.planning.budget import RUN_SECONDS, EvalLoad, ceiling, evaluations, training_seconds
from mbp.planning.constants import FEWEST_STEPS, PASSES
from mbp.planning.precision_plan import PrecisionPlan, plan_precision, with_precision
from mbp.planning.probe import Probe
from mbp.planning.rows import RowPlan, plan_rows
from mbp.planning.settings import RunSettings
from mbp.planning.steptime import step_seconds
from mbp.planning.variation import VariationPlan, plan_variation
from mbp.protocol import token_text
from mbp.resolve import Resolved

# The ceiling is time: the steps that fit the run's budget (``mbp.planning.budget``) at the step time
# measured on this machine, not a count of arithmetic: 14 TFLOP is 6.5 minutes on a 2-core AMD EPYC
# (AVX2, no AVX512-BF16) and under 3 on a 2-core Intel Xeon with AMX; a measured step follows the
# model, the batches, the precision and the machine: byte-level rows the model skips (``ThinningHead``,
# ``context_weight: 0``) cost nothing, and a machine that multiplies in bf16 trains more steps in the
# same minutes. A measured ceiling can differ by a step or two between runs, so a run to be repeated
# exactly names its steps (``train.steps``).


def with_steps(resolved: Resolved, steps: int) -> Resolved:
    return resolved.with_settings("train", steps=steps)


def with_eval_samples(resolved: Resolved, samples: int | None) -> Resolved:
    """``resolved`` evaluating ``samples`` held-out samples spread over its set (None: all of them)."""
    return resolved.with_settings("data", max_eval_samples=samples)


@dataclass(frozen=True)
class StepCount:
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
    probe: Probe,
    align: int,
    device: torch.device | None = None,
    seconds: float | None = None,
) -> StepCount:
    """``PASSES`` over the probed set, at least ``FEWEST_STEPS`` and at most ``ceiling`` (which wins: steps
    long enough that the floor would outlast the minutes are held to them): the run's budget less what
    evaluating the probe's held-out set will cost. Counts at most the samples the ceiling needs, and
    encodes only the first ``PROBE_ROWS`` rows' worth."""
    per_step = probe.per_step(resolved, align)
    if not probe.batches(resolved, align, augment=False):
        seconds = 0.0  # nothing packs, nothing to time
    elif seconds is None:
        seconds = probe_seconds(resolved, probe, align, device or torch.device("cpu"))
    run_seconds = resolved.pipeline.train.minutes * 60
    load = eval_load(resolved, probe, ceiling(seconds, training_seconds(0.0, run_seconds)))
    if resolved.pipeline.data.max_eval_samples is None:  # the pipeline's own cap is kept as it is
        load = load.fitted(seconds, per_step, run_seconds)
    most = ceiling(seconds, training_seconds(load.seconds(seconds, per_step), run_seconds))
    wanted, samples = passes_steps(probe, per_step, most)
    return StepCount(min(most, wanted), samples, per_step, wanted > most, seconds, load, run_seconds)


def probe_seconds(resolved: Resolved, probe: Probe, align: int, device: torch.device) -> float:
    """One step's measured seconds on the probe's batches as training weights them (0 where the data
    packs no batch)."""
    timed = probe.timing_batches(resolved, align) or probe.batches(resolved, align, augment=False)
    return step_seconds(resolved, timed, device) if timed else 0.0


def passes_steps(probe: Probe, per_step: float, most: int) -> tuple[int, int]:
    """The steps of ``PASSES`` over the probed set (at least ``FEWEST_STEPS``) and the samples counted:
    counting stops once the passes would take more than ``most`` steps."""
    samples = probe.count(math.ceil(most * per_step / PASSES) + 1)
    return max(FEWEST_STEPS, math.ceil(PASSES * samples / per_step)), samples


def eval_load(resolved: Resolved, probe: Probe, most_steps: int) -> EvalLoad:
    """The held-out samples a run will evaluate (read, not encoded) and how often."""
    if not probe.has_held_out:
        return EvalLoad()
    samples = probe.held_out_count(resolved.pipeline.data.max_eval_samples)
    return EvalLoad(samples, evaluations(resolved.pipeline.train.eval_every, most_steps))


@dataclass(frozen=True)
class RunPlan:
    settings: RunSettings
    """What the run trains with: the pipeline's own settings where it gives them, else planned."""
    rows: RowPlan | None
    steps: StepCount | None
    """None where the pipeline gives the value."""
    precision: PrecisionPlan
    variation: VariationPlan | None = None
    """None where the pipeline sets ``data.augment`` or no field's codec leaves it to the run."""
    patch: BoundaryPlan | None = None
    """None where the pipeline gives the byte-level stage's patch (a ``BoundaryPlan.given`` where it
    gives boundary rules too)."""

    def settled(self, settings: RunSettings) -> RunPlan:
        """This plan with ``settings`` as the run's (agreed, or recorded on resume): its step plan then
        says their steps."""
        steps = dataclasses.replace(self.steps, steps=settings.steps) if self.steps is not None else None
        return dataclasses.replace(self, settings=settings, steps=steps)

    def describe(self, batch_rows: int) -> str:
        """The run's first line on its steps, rows, patch and variation (``batch_rows``: rows a step)."""
        steps = self.steps.describe() if self.steps else f"{self.settings.steps} steps"
        parts = [steps, f"{batch_rows} row{'s' if batch_rows > 1 else ''} a step"]
        return ", ".join(
            parts + [part.describe() for part in (self.rows, self.patch, self.variation) if part]
        )

    def summary(self, varied: bool, changes: dict[str, Any]) -> dict[str, Any]:
        """The run summary's account of what was planned (``varied``: as the run went; ``changes``: what
        changed its steps as it went, ``Deadline.summary``)."""
        summary: dict[str, Any] = {}
        if self.rows is not None:
            summary["row_plan"] = self.rows.summary()
        if self.variation is not None:
            summary["variation"] = self.variation.summary(varied)
        if self.steps is not None:
            summary["step_plan"] = {**self.steps.summary(), **changes}
        return summary


def plan_run(resolved: Resolved, probe: Probe, device: torch.device | None = None) -> RunPlan:
    """The byte-level stage's patch (rows align to it), rows, then the precision (``auto`` settled by
    timing both where the hardware offers bf16), then steps (which count samples in those rows), then
    whether samples vary (from the passes those steps make), for what the pipeline leaves unset, all
    from one ``probe`` of the data. The patch and rows are deterministic; precision and steps at the
    ceiling follow measured step times, so a resumed run takes those, and the variation that follows
    from the steps, from its checkpoint (``mbp.planning.settle``), not from planning again."""
    device = device or torch.device("cpu")
    planned, patch = plan_byte_patches(resolved, probe)
    planned, rows = plan_rows(planned, probe)
    align = planned.pipeline.model.pack_align
    precision = plan_precision(planned, lambda: probe.timing_batches(planned, align), device)
    planned = with_precision(planned, precision.choice.precision)
    steps = None
    if planned.pipeline.train.steps is None:
        seconds = precision.seconds.get(precision.choice.precision)
        steps = plan_steps(planned, probe, align, device, seconds)
        planned = with_steps(planned, steps.steps)
        if steps.evaluation.whole:  # evaluating all would crowd out training: a spread subset
            planned = with_eval_samples(planned, steps.evaluation.samples)
    given = planned  # the pipeline whose stream is probed, bound before planned is rebound
    per_step = (lambda: steps.per_step) if steps else (lambda: probe.per_step(given, align))
    known = steps.samples if steps and not steps.capped else None  # below the ceiling: counted to the end
    total = planned.pipeline.train.steps or 0  # set: given, or planned above
    planned, variation = plan_variation(planned, probe, total, per_step, known)
    settings = RunSettings.of(planned, precision.choice)
    return RunPlan(settings, rows, steps, precision, variation, patch)


def plan_byte_patches(resolved: Resolved, probe: Probe) -> tuple[Resolved, BoundaryPlan | None]:
    """Where the pipeline leaves the byte-level patch unset: boundary rules from the codecs. Rules the
    pipeline gives come back as they are, described (``BoundaryPlan.given``); None where it gives one
    patch length and no rules, or the model has one stage."""
    if resolved.pipeline.model.plans_boundaries:
        return with_planned_boundaries(resolved, probe)
    return resolved, given_boundaries(resolved, probe)


def preview(resolved: Resolved, shards: list[str]) -> dict[str, Any]:
    """What ``mbp run`` would train on ``shards``: its rows and steps, given by the pipeline or planned,
    by the code that plans a run (``plan_run``) and in the words its first line uses."""
    probe = Probe(shards)
    plan = plan_run(resolved, probe)
    settings = plan.settings
    rows, steps = settings.row_len, settings.steps
    return {
        "seq_len": rows,
        "steps": steps,
        "patch": settings.patch,
        "planned": [
            name
            for name, part in (("patch", plan.patch), ("seq_len", plan.rows), ("steps", plan.steps))
            if part is not None and not (isinstance(part, BoundaryPlan) and part.given)
        ],
        "describe": ", ".join(
            [
                plan.rows.describe() if plan.rows else f"rows of {rows} tokens (given)",
                plan.steps.describe() if plan.steps else f"{steps} steps (given)",
                *([plan.patch.describe()] if plan.patch else []),
                *([plan.variation.describe()] if plan.variation else []),
            ]
        ),
        **({"data_path": rate} if (rate := data_path_rate(plan, probe)) else {}),
        **({"sample_patches": shown} if (shown := sample_patches(settings.applied(resolved), probe)) else {}),
    }


SHOWN_PATCHES = 24
"""Patches of one sample ``mbp shards inspect --pipeline`` shows: enough to see where they fall."""


def sample_patches(resolved: Resolved, probe: Probe) -> list[str]:
    """The first training sample's first byte-level patches as the run places them, each in words
    (``mbp.protocol.token_text``); none for a model of one stage or where no sample encodes."""
    model = resolved.pipeline.model
    samples = probe.samples(resolved, 1) if len(model.stages) > 1 else []
    if not samples:
        return []
    tokens = samples[0].tokens
    rules = model.boundary_rules
    if rules is None:
        starts = np.arange(len(tokens)) % model.patches[-1] == 0
    else:
        starts = patch_starts(tokens, rules, model.patches[-1])
    edges = [*np.flatnonzero(starts).tolist(), len(tokens)]
    return [token_text(tokens[a:b]) for a, b in itertools.pairwise(edges)][:SHOWN_PATCHES]


def data_path_rate(plan: RunPlan, probe: Probe) -> dict[str, Any] | None:
    """The training stream's rate on this machine, timed on the samples the plan read (``Reading``),
    beside what a step takes where the plan measured one: samples a step over its seconds. None where
    the plan encoded no sample."""
    read = probe.reading()
    if read is None:
        return None
    reading, augmented = read
    rate: dict[str, Any] = {
        "samples_per_s": _figures(reading.samples / reading.seconds),
        "mb_per_s": _figures(reading.tokens / reading.seconds / 1e6),  # a byte a token
        "samples": reading.samples,
        "augmented": augmented,
    }
    if plan.steps is not None and plan.steps.seconds > 0:
        rate["step_samples_per_s"] = _figures(plan.steps.per_step / plan.steps.seconds)
    return rate


def _figures(value: float) -> float:
    """``value`` to three significant figures: a rate of a small set is not rounded to 0."""
    return float(f"{value:.3g}")
