"""Patches that follow the data, where a pipeline leaves the byte-level ``patch`` unset
(``model.boundaries`` unset, ``codecs`` or ``entropy``): each field's patches placed as its codec
declares (``CodecTraits.boundaries``: text at word starts), one row where it lays its payload out in
rows, a fixed length otherwise; the longest of them is the byte-level stage's patch. The rules become
part of the model config (``model.boundaries``), so training, evaluation and generation place patches
alike. ``patch: N`` fixes one length instead.

The default because, in nine-minute runs on 2 CPU cores against patch 8, 28x28 glyphs beside spoken
letters score 4.9 points higher (three seeds), the bundled demo 3 to 6, and text takes 0.84x to 0.95x
the bits per byte, while sets of one kind of row stay level with their one-row patch and a mix whose
images' row is 8 bytes ties (BENCHMARKS.md, patches that follow the data).
``boundaries: entropy`` swaps the word rule for one trained on the run's data
(``mbp.planning.entropy_fit``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mbp.boundaries import BoundaryRule, EntropyStarts, FixedLength, WordStarts, codec_payloads, patch_starts
from mbp.config import ModelConfig
from mbp.planning.constants import DEFAULT_PATCH
from mbp.planning.entropy_fit import fit_entropy_starts
from mbp.planning.patch_plan import PROBE_SAMPLES, field_rows, patch_for_row
from mbp.planning.probe import LENGTH_SAMPLES, Probe
from mbp.resolve import Resolved
from mbp.sample import EncodedSample
from mbp.traits import FieldCodec

ENTROPY_SAMPLES = LENGTH_SAMPLES
"""Training samples an entropy rule's byte model is trained on: those the run's row lengths are measured
on, read once."""
WORD_LONGEST = 16
"""The longest word patch where a codec's ``WordStarts`` names none: a longer word is cut (SpaceByte
and BLT patches of English text average 4 to 8 bytes; 16 keeps all but the rarest words whole)."""


@dataclass(frozen=True)
class BoundaryPlan:
    """Where a model's byte-level patches start: ``rules`` by codec (``model.boundaries``), none longer
    than ``longest`` (the byte-level stage's patch)."""

    rules: dict[str, BoundaryRule]
    longest: int
    fields: dict[str, str]
    """Each field's rule in words, for the run's first line."""
    mean: float | None = None
    """The mean patch, in tokens, of the probed samples (None: not measured)."""
    given: bool = False
    """The pipeline gave these rules (``model.boundaries`` by codec, with ``patch``): only described."""

    def describe(self, mean: float | None = None) -> str:
        """``boundaries: txt word starts (longest 16), image one 32-byte row; mean patch 5.3 bytes``."""
        mean = self.mean if mean is None else mean
        fields = ", ".join(f"{name} {words}" for name, words in self.fields.items())
        text = f"boundaries{' (given)' if self.given else ''}: {fields}"
        return text if mean is None else f"{text}; mean patch {mean:.1f} bytes"

    def apply(self, model: ModelConfig) -> ModelConfig:
        """``model`` with these rules and its byte-level patch set to the longest."""
        return model.with_boundaries(self.rules, self.longest)


def plan_boundaries(
    model: ModelConfig, fields: Mapping[str, FieldCodec], rows: Mapping[int, list[str]]
) -> BoundaryPlan | None:
    """The rules for ``model``'s pipeline, from its ``fields`` as the run encodes them and ``rows``:
    each row length seen in the probed training samples with the fields it came from. None where the
    byte-level ``patch`` is set (``patch: N`` fixes one length) or the model has one stage."""
    if not model.leaves_byte_patch:
        return None
    row_of = _one_row_each(rows)
    chosen = {name: _field_rule(field, row_of.get(name)) for name, field in fields.items()}
    by_codec: dict[str, BoundaryRule] = {}
    for name, (rule, _) in chosen.items():
        codec = fields[name].codec.name
        by_codec[codec] = _merged(by_codec[codec], rule) if codec in by_codec else rule
    longest = max([DEFAULT_PATCH if not by_codec else 1, *(_length(rule) for rule in by_codec.values())])
    described = {name: words for name, (_, words) in chosen.items()}
    for name, field in fields.items():
        if by_codec[field.codec.name] != chosen[name][0]:  # two fields of one codec share a rule
            described[name] = _words(by_codec[field.codec.name])
    return BoundaryPlan(by_codec, longest, described)


def _one_row_each(rows: Mapping[int, list[str]]) -> dict[str, int]:
    """Each field's row length, for the fields whose probed rows have one length (images of several
    sizes in one field get fixed patches: no one row tiles them all)."""
    lengths: dict[str, set[int]] = {}
    for row, names in rows.items():
        for name in names:
            lengths.setdefault(name, set()).add(row)
    return {name: min(seen) for name, seen in lengths.items() if len(seen) == 1}


def _field_rule(field: FieldCodec, row: int | None) -> tuple[BoundaryRule, str]:
    """One field's rule and its description: the codec's declared one, else one row, else fixed."""
    declared = field.traits.boundaries
    if isinstance(declared, WordStarts):
        rule: BoundaryRule = WordStarts(declared.longest or WORD_LONGEST)
        return rule, _words(rule)
    if declared is not None:
        return declared, _words(declared)
    if field.traits.rows and row is not None:
        patch = row_patch(row)
        if patch == row:
            return FixedLength(row), f"one {row}-byte row"
        return FixedLength(patch), f"{patch} bytes of {row}-byte rows"
    return FixedLength(DEFAULT_PATCH), _words(FixedLength(DEFAULT_PATCH))


def row_patch(row: int) -> int:
    """The patch for rows of ``row`` bytes (``patch_for_row``), ``DEFAULT_PATCH`` where a row has no part
    that makes one."""
    return patch_for_row(row) or DEFAULT_PATCH


def _merged(first: BoundaryRule, second: BoundaryRule) -> BoundaryRule:
    """One rule for two fields of one codec (a segment header names the codec, not the field): fixed
    lengths meet at their greatest common divisor, so each field's patches still tile its rows."""
    if isinstance(first, FixedLength) and isinstance(second, FixedLength):
        return FixedLength(math.gcd(first.length, second.length))
    return first


def _length(rule: BoundaryRule) -> int:
    return rule.length if isinstance(rule, FixedLength) else rule.longest or WORD_LONGEST


def _words(rule: BoundaryRule) -> str:
    if isinstance(rule, FixedLength):
        return f"fixed {rule.length} bytes"
    if isinstance(rule, EntropyStarts):
        return f"high byte entropy (longest {rule.longest or WORD_LONGEST})"
    return f"word starts (longest {rule.longest or WORD_LONGEST})"


def mean_patch(plan: BoundaryPlan, samples: Iterable[np.ndarray]) -> float | None:
    """The mean byte-level patch, in tokens, of ``samples`` (token sequences) under ``plan``; None for
    no samples."""
    tokens = patches = 0
    for sample in samples:
        tokens += len(sample)
        patches += int(patch_starts(sample, plan.rules, plan.longest).sum())
    return tokens / patches if patches else None


def with_planned_boundaries(resolved: Resolved, probe: Probe) -> tuple[Resolved, BoundaryPlan | None]:
    """``resolved`` with its model's boundary rules planned from the first training samples of
    ``probe`` where the pipeline leaves the byte-level patch unset (``plan_boundaries``), and the plan;
    else unchanged and None."""
    if not resolved.pipeline.model.leaves_byte_patch:
        return resolved, None
    samples = probe.samples(resolved, PROBE_SAMPLES)
    plan = plan_boundaries(resolved.pipeline.model, resolved.encoder.fields, field_rows(resolved, samples))
    if plan is None:
        return resolved, None
    if resolved.pipeline.model.boundaries == "entropy":
        fields = resolved.encoder.fields
        plan = with_entropy_rules(plan, fields, probe.samples(resolved, ENTROPY_SAMPLES))
    plan = replace(plan, mean=mean_patch(plan, (sample.tokens for sample in samples)))
    pipeline = resolved.pipeline.model_copy(update={"model": plan.apply(resolved.pipeline.model)})
    return resolved.with_encoding(pipeline), plan


def given_boundaries(resolved: Resolved, probe: Probe) -> BoundaryPlan | None:
    """What the rules a pipeline gives (``model.boundaries`` by codec, the byte-level ``patch`` set) do
    to its fields, for the run's first line: each field's rule in words (a codec not named: fixed
    patches of ``patch``) and the mean patch of the probed samples. None where it gives none."""
    model = resolved.pipeline.model
    rules = model.boundary_rules
    if rules is None or model.leaves_byte_patch or len(model.stages) < 2:
        return None
    longest = model.patches[-1]
    fields = {
        name: _words(rules.get(field.codec.name, FixedLength(longest)))
        for name, field in resolved.encoder.fields.items()
    }
    plan = BoundaryPlan(dict(rules), longest, fields, given=True)
    samples = probe.samples(resolved, PROBE_SAMPLES)
    return replace(plan, mean=mean_patch(plan, (sample.tokens for sample in samples)))


def with_trained_boundaries(resolved: Resolved, trained: ModelConfig) -> Resolved:
    """For a checkpoint's pipeline: the boundary rules and byte-level patch its run planned, where the
    pipeline leaves them unset (evaluation, ``mbp.load`` and generation then patch as training did)."""
    model = resolved.pipeline.model
    if trained.boundary_rules is None or model.boundary_rules is not None or len(model.stages) < 2:
        return resolved
    configured = model.with_byte_patch(trained.patches[-1]).model_copy(
        update={"boundaries": trained.boundaries}
    )
    return resolved.with_encoding(resolved.pipeline.model_copy(update={"model": configured}))


def with_entropy_rules(
    plan: BoundaryPlan, fields: Mapping[str, FieldCodec], samples: Sequence[EncodedSample]
) -> BoundaryPlan:
    """``plan`` with every word rule replaced by an entropy rule of the same longest patch, its byte model
    trained on that codec's payloads in ``samples`` (``fit_entropy_starts``); a codec with no payload of
    two bytes or more there keeps its word rule."""
    rules = dict(plan.rules)
    payloads: dict[str, list[np.ndarray]] = {}
    for sample in samples:
        for codec, payload in codec_payloads(sample.tokens):
            payloads.setdefault(codec, []).append(payload)
    for codec, rule in plan.rules.items():
        if isinstance(rule, WordStarts) and any(len(p) > 1 for p in payloads.get(codec, [])):
            rules[codec] = fit_entropy_starts(payloads[codec], rule.longest or WORD_LONGEST)
    changed = {codec for codec, rule in rules.items() if rule != plan.rules[codec]}
    described = {
        name: _words(rules[fields[name].codec.name]) if fields[name].codec.name in changed else words
        for name, words in plan.fields.items()
    }
    return replace(plan, rules=rules, fields=described)
