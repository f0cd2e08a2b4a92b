"""A model's boundary rules as configuration: where its byte-level patches start, per codec, as data.

A rule is one of the declarative ``mbp.boundaries`` rules written as a mapping (``{rule: fixed, length:
28}``, ``{rule: words, longest: 16}``, ``{rule: entropy, uncertain: <base64>, longest: 16}``), the form
``rule_to_json`` writes and a checkpoint's config holds: validated like every model setting, never code.
``model.boundaries`` maps a codec name to its rule.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, field_validator

from mbp.boundaries import CONTEXTS, BoundaryRule, EntropyStarts, FixedLength, WordStarts

UNCERTAIN_CHARS = 4 * math.ceil(CONTEXTS // 8 / 3)
"""The base64 length of an entropy rule's contexts (a bit each)."""


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


class EntropyRule(BaseModel):
    """A patch where a small byte model's next-byte entropy is high (``mbp.boundaries.EntropyStarts``):
    ``uncertain``, the contexts it marks, as base64 (a run trains it: ``model.boundaries: entropy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: Literal["entropy"]
    uncertain: str = Field(min_length=UNCERTAIN_CHARS, max_length=UNCERTAIN_CHARS)
    longest: StrictInt | None = Field(default=None, gt=0)

    @field_validator("uncertain")
    @classmethod
    def _is_base64(cls, uncertain: str) -> str:
        try:
            base64.b64decode(uncertain, validate=True)
        except binascii.Error as error:
            raise ValueError(f"uncertain is not base64: {error}") from None
        return uncertain


Config = FixedRule | WordsRule | EntropyRule
RuleConfig = Annotated[Config, Field(discriminator="rule")]
"""One codec's rule in a model config."""


def to_rule(config: Config) -> BoundaryRule:
    """The ``mbp.boundaries`` rule ``config`` describes."""
    if isinstance(config, FixedRule):
        return FixedLength(config.length)
    if isinstance(config, EntropyRule):
        return EntropyStarts(base64.b64decode(config.uncertain), config.longest)
    return WordStarts(config.longest)


def to_config(rule: BoundaryRule) -> Config:
    """``rule`` as model configuration."""
    if isinstance(rule, FixedLength):
        return FixedRule(rule="fixed", length=rule.length)
    if isinstance(rule, EntropyStarts):
        uncertain = base64.b64encode(rule.uncertain).decode("ascii")
        return EntropyRule(rule="entropy", uncertain=uncertain, longest=rule.longest)
    return WordsRule(rule="words", longest=rule.longest)


def rules_of(configs: Mapping[str, Config] | None) -> dict[str, BoundaryRule] | None:
    """The rules by codec of a model's ``boundaries`` (None: fixed patches, none set)."""
    return None if configs is None else {codec: to_rule(config) for codec, config in configs.items()}


_RULE = TypeAdapter(RuleConfig)


def rule_to_json(rule: BoundaryRule) -> dict[str, object]:
    """``rule`` as a JSON-ready dict: the form ``model.boundaries`` holds for it."""
    return to_config(rule).model_dump()


def rule_from_json(data: Mapping[str, object]) -> BoundaryRule:
    """The rule ``rule_to_json`` wrote; ValueError naming what is wrong otherwise."""
    try:
        return to_rule(_RULE.validate_python(dict(data)))
    except ValidationError as error:
        problem = error.errors()[0]["msg"] if error.errors() else str(error)
        raise ValueError(
            f"not a boundary rule: {str(dict(data))[:200]} ({problem}; expected rule: fixed with a length, "
            "words, or entropy with its uncertain contexts)"
        ) from None
