"""Generation requests: sampling settings checked, prompt fields encoded, and what came back.

``mbp.LoadedModel.generate`` and ``mbp generate`` share this module. Its messages name an option the
way the caller spells it: a prefix of ``--`` turns ``temperature nan`` into ``--temperature nan``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mbp.components import ComponentTable
from mbp.errors import CodecError, ConfigError
from mbp.generate import Sampling
from mbp.protocol import END, EOS, Segment, prompt_stream
from mbp.resolve import Resolved

FieldValues = Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]]
"""Complete segments before the prompt, in order: each field's value (a file's bytes, or text)."""


@dataclass(frozen=True)
class FieldValue:
    """One prompt field: its name in the pipeline, its value, and where the value came from."""

    name: str
    data: bytes
    source: str = "the value given"
    """Named in an error when the field's codec rejects the value (a file's path, say)."""


@dataclass(frozen=True)
class Continuation:
    """A prompt and the tokens generated after it (markers above 255 included)."""

    prompt: list[int]
    generated: list[int]

    @property
    def payload(self) -> bytes:
        """The generated data bytes: the rest of the open segment when generation stopped at its end."""
        return bytes(token for token in self.generated if token < 256)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated


def field_values(fields: FieldValues | None) -> list[FieldValue]:
    """``fields`` as a list in order; text values are encoded as UTF-8."""
    pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields or ())
    return [
        FieldValue(name, value.encode("utf-8") if isinstance(value, str) else bytes(value))
        for name, value in pairs
    ]


def sampling_of(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    *,
    flag: str = "",
) -> Sampling:
    """The sampling settings, checked: a NaN temperature would sample from NaN probabilities."""
    for option, number in (("temperature", temperature), ("top-p" if flag else "top_p", top_p)):
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{flag}{option} {number}: expected a finite number")
    if temperature < 0:
        raise ConfigError(f"{flag}temperature {temperature}: expected 0 (greedy) or more")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"{flag}{'top-k' if flag else 'top_k'} {top_k}: expected 1 or more")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{flag}{'top-p' if flag else 'top_p'} {top_p}: expected a number in (0, 1]")
    return Sampling(temperature, top_k, top_p, seed)


def check_codec(name: str, components: ComponentTable, *, flag: str = "") -> None:
    if name not in components.names("codecs"):
        valid = ", ".join(components.names("codecs"))
        raise ConfigError(f"{flag}codec {name}: not a registered codec (valid: {valid})")


def check_field(resolved: Resolved | None, name: str, *, flag: str = "") -> None:
    """``name`` is a field of the checkpoint's pipeline."""
    if resolved is None or name not in resolved.pipeline.fields:
        known = ", ".join(resolved.pipeline.fields) if resolved else "none (checkpoint has no pipeline)"
        raise ConfigError(f"{flag}field {name}: not a field of the checkpoint's pipeline (fields: {known})")


def prompt_tokens(
    resolved: Resolved | None, fields: list[FieldValue], codec: str, start: bytes, *, flag: str = ""
) -> torch.Tensor:
    """``BOS``, each field's segment through the pipeline's codec for it (reading views included, as in
    training), then a ``codec`` segment opened and begun with ``start``."""
    segments: list[Segment] = []
    for value in fields:
        check_field(resolved, value.name, flag=flag)
        assert resolved is not None  # a checkpoint without a pipeline has no field
        try:
            segments.append(resolved.encoder.codecs[value.name].encode(value.data))
        except CodecError as error:
            raise ConfigError(f"{flag}field {value.name}: {value.source}: {error}") from None
    return torch.as_tensor(prompt_stream(segments, codec, start).astype("int64"))


def stop_tokens(whole_sample: bool) -> tuple[int, ...]:
    """Where generation stops: the open segment's end, or with ``whole_sample`` the sample's."""
    return (EOS,) if whole_sample else (END, EOS)
