"""A model's boundary rules as configuration: where its byte-level patches start, per codec, as data.

A rule is one of the declarative ``mbp.boundaries`` rules written as a mapping (``{rule: fixed, length:
28}``, ``{rule: words, longest: 16}``), the form ``rule_to_json`` writes into a checkpoint's config:
validated like every model setting, never code. ``model.boundaries`` maps a codec name to its rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from mbp.boundaries import BoundaryRule, FixedLength, WordStarts


class FixedRule(BaseModel):
    """Patches of ``length`` payload bytes (one image row, one spectrogram frame, a fixed length)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: Literal["fixed"]
    length: StrictInt = Field(gt=0)


class WordsRule(BaseModel):
    """A patch per word, cut every ``longest`` bytes (None: the byte-level stage's patch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: Literal["words"]
    longest: StrictInt | None = Field(default=None, gt=0)


RuleConfig = Annotated[FixedRule | WordsRule, Field(discriminator="rule")]
"""One codec's rule in a model config."""


def to_rule(config: FixedRule | WordsRule) -> BoundaryRule:
    """The ``mbp.boundaries`` rule ``config`` describes."""
    if isinstance(config, FixedRule):
        return FixedLength(config.length)
    return WordStarts(config.longest)


def to_config(rule: BoundaryRule) -> FixedRule | WordsRule:
    """``rule`` as model configuration."""
    if isinstance(rule, FixedLength):
        return FixedRule(rule="fixed", length=rule.length)
    return WordsRule(rule="words", longest=rule.longest)


def rules_of(configs: Mapping[str, FixedRule | WordsRule] | None) -> dict[str, BoundaryRule] | None:
    """The rules by codec of a model's ``boundaries`` (None: fixed patches, none set)."""
    return None if configs is None else {codec: to_rule(config) for codec, config in configs.items()}
