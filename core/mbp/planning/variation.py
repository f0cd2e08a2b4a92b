"""Whether a run varies its training samples (``data.augment``) when the pipeline leaves it unset.

Shifted images teach a model that where a glyph sits is not what it is, but they are a harder task
than the plain images, and a short run spends its steps learning it. Digit glyphs from held-out fonts
(16x16), plain against shifted, by the passes a run makes over its 1,660 training glyphs: 5.8 passes
0.994 / 0.791, 10 passes 0.998 / 0.974, 15 passes 0.996 / 0.998, 30 passes 1.000 / 0.998; the bundled
demo (750 steps, about 2.5 passes) 0.950 / 0.860. At 15 to 30 passes variation pays where the
model starts to memorise (the suite's planned runs, seed 0, plain / shifted): capitals from held-out
fonts 0.988 / 0.994 (30 passes), 8x8 handwritten digits 0.912 / 0.919 (kept best 0.923 / 0.953; 30),
PNG files of those digits 0.222 / 0.253 (30), PNG digit glyphs 0.257 / 0.296 (30), 28x28 lowercase
from held-out fonts a mean of 0.946 over thirteen runs of 14-20 passes / 0.954 over four seeds planned
(18-19 passes). So a run varies from 15 passes, the fewest measured at which varying no longer cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mbp.planning.constants import AUGMENT_PASSES
from mbp.planning.probe import Probe
from mbp.resolve import Resolved


@dataclass(frozen=True)
class VariationPlan:
    varied: bool
    fields: list[str]
    """The fields the decision applies to (their codecs leave ``augment`` to the run)."""
    passes: float | None
    """Passes the run trains over its set, where counted (None: more samples than counting needed)."""

    def describe(self) -> str:
        names = ", ".join(self.fields)
        if self.passes is None:
            return f"{names} not varied (under {AUGMENT_PASSES} passes)"
        state = "varied" if self.varied else "not varied"
        return f"{names} {state} ({self.passes:.1f} passes; data.augment)"

    def summary(self, varied: bool) -> dict[str, object]:
        """``varied``: as the run went (a resumed run varies as its checkpoint recorded)."""
        passes = None if self.passes is None else round(self.passes, 2)
        return {"varied": varied, "fields": self.fields, "passes": passes}


def with_augment(resolved: Resolved, varied: bool) -> Resolved:
    """``resolved`` with ``data.augment`` settled, and an encoder that varies accordingly."""
    return resolved.with_encoding(resolved.with_settings("data", augment=varied).pipeline)


def plan_variation(
    resolved: Resolved,
    probe: Probe,
    steps: int,
    per_step: Callable[[], float],
    known_samples: int | None = None,
) -> tuple[Resolved, VariationPlan | None]:
    """Settle an unset ``data.augment``: on where ``steps`` of ``per_step()`` samples (asked only when
    there is something to settle) make at least ``AUGMENT_PASSES`` passes over the probed set. The set's
    size is ``known_samples`` where the caller counted it to the end (the step plan, below its ceiling);
    else counted here, at most the samples that would still allow that. Nothing to settle (None) where
    ``data.augment`` is set or no field's codec leaves it to the run."""
    fields = resolved.encoder.following
    if resolved.pipeline.data.augment is not None or not fields:
        return resolved, None
    samples_a_step = per_step()
    most = math.floor(steps * samples_a_step / AUGMENT_PASSES)  # more samples than this: fewer passes
    samples = known_samples
    if samples is None:
        samples = probe.count(most + 1)
    counted = 0 < samples <= most
    passes = steps * samples_a_step / samples if counted else None
    return with_augment(resolved, counted), VariationPlan(counted, fields, passes)
