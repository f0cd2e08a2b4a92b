"""The one place the core asks a plugin object what it is: a codec's ``traits`` and a head's ``defaults``,
read when the pipeline is resolved (``mbp.resolve``) and carried from there; nothing later asks again.

Each value is checked here, so a plugin that declares something that cannot work is named before anything
is trained: a context weight outside [0, 1] would train silently wrong, and traits that name a method the
codec lacks would fail mid-run. A plugin written against the optional protocols these values replace
(:mod:`mbp.legacy_protocols`) is read into the equivalent value, with one warning per plugin class.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from mbp.boundaries import FixedLength, WordStarts
from mbp.codec import Codec, CodecTraits
from mbp.errors import PluginError
from mbp.heads import HeadDefaults, TaskHead
from mbp.legacy_protocols import (
    CODEC_ATTRIBUTES,
    HEAD_ATTRIBUTES,
    old_codec_traits,
    old_head_defaults,
    old_names,
)
from mbp.protocol import Segment
from mbp.sample import EncodedSample


class PluginDeprecationWarning(FutureWarning):
    """A plugin uses an interface that a later release drops. A ``FutureWarning``, so that the people
    who run the plugin see it by default, not only its author's tests."""


_warned: set[type] = set()
"""Plugin classes already warned about: one warning per class, however many times it is resolved."""

TRAIT_METHODS = {"rows": "row_bytes", "reading_view": "for_reading", "segment_extension": "extension_of"}
"""The method each ``CodecTraits`` flag names (``augment`` other than "never": ``encode_augmented``)."""


def codec_traits(codec: Codec) -> CodecTraits:
    """``codec``'s declared traits (``CodecTraits()`` where it declares none), checked."""
    traits = getattr(codec, "traits", None)
    if traits is None:
        traits = old_codec_traits(codec)
        _warn_old(codec, f"codec '{codec.name}'", old_names(codec, CODEC_ATTRIBUTES), "traits", traits)
    if not isinstance(traits, CodecTraits):
        raise PluginError(f"codec '{codec.name}': traits must be a CodecTraits, got {type(traits).__name__}")
    weight = traits.context_weight
    if weight is not None and not _number(weight, 1, inclusive=True):
        raise PluginError(f"codec '{codec.name}': context_weight must be a number in [0, 1], got {weight!r}")
    if traits.augment not in ("never", "run", "always"):
        raise PluginError(
            f"codec '{codec.name}': traits.augment must be never, run or always, got {traits.augment!r}"
        )
    if traits.boundaries is not None and not isinstance(traits.boundaries, FixedLength | WordStarts):
        raise PluginError(
            f"codec '{codec.name}': traits.boundaries must be a FixedLength or WordStarts (mbp.api) or None, "
            f"got {type(traits.boundaries).__name__}"
        )
    named = [method for flag, method in TRAIT_METHODS.items() if getattr(traits, flag)]
    named += ["encode_augmented"] if traits.augment != "never" else []
    missing = [method for method in named if not callable(getattr(codec, method, None))]
    if missing:
        raise PluginError(f"codec '{codec.name}': its traits name {', '.join(missing)}, which it lacks")
    return traits if weight is None else replace(traits, context_weight=float(weight))


def head_defaults(head: TaskHead) -> HeadDefaults:
    """``head``'s declared defaults (``HeadDefaults()`` where it declares none), checked."""
    defaults = getattr(head, "defaults", None)
    if defaults is None:
        defaults = old_head_defaults(head)
        _warn_old(head, f"head '{head.name}'", old_names(head, HEAD_ATTRIBUTES), "defaults", defaults)
    if not isinstance(defaults, HeadDefaults):
        raise PluginError(
            f"head '{head.name}': defaults must be a HeadDefaults, got {type(defaults).__name__}"
        )
    problems = []
    rows = defaults.batch_size
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        problems.append(f"batch_size must be a whole number of at least 1, got {rows!r}")
    if not _number(defaults.dropout, 1, inclusive=False):
        problems.append(f"dropout must be a number in [0, 1), got {defaults.dropout!r}")
    if defaults.selection_mode not in ("min", "max"):
        problems.append(f"selection_mode must be min or max, got {defaults.selection_mode!r}")
    if defaults.thins_context and not callable(getattr(head, "training_weights", None)):
        problems.append("thins_context is set, but it has no training_weights(sample, rng, row)")
    if problems:
        raise PluginError(f"head '{head.name}': defaults: {'; '.join(problems)}")
    return defaults


def _warn_old(
    plugin: Any, who: str, used: list[str], attribute: str, value: CodecTraits | HeadDefaults
) -> None:
    """One warning per plugin class that uses the old protocols, naming the value that replaces them."""
    if not used or type(plugin) in _warned:
        return
    _warned.add(type(plugin))
    warnings.warn(
        f"{who} ({type(plugin).__module__}.{type(plugin).__qualname__}) declares {', '.join(used)} through "
        f"the deprecated optional protocols; declare `{attribute} = {_shown(value)}` (mbp.api) instead: "
        "the old ones are read for one more release",
        PluginDeprecationWarning,
        stacklevel=4,
    )


def _number(value: object, high: float, inclusive: bool) -> bool:
    """Whether ``value`` is a number (not a bool) from 0 to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= high if inclusive else 0 <= value < high


def _shown(value: CodecTraits | HeadDefaults) -> str:
    """``value`` as code that builds it, naming only the fields that differ from the defaults."""
    default = type(value)()
    changed = [
        f"{f.name}={getattr(value, f.name)!r}"
        for f in fields(value)
        if getattr(value, f.name) != getattr(default, f.name)
    ]
    return f"{type(value).__name__}({', '.join(changed)})"


@dataclass(frozen=True)
class FieldCodec:
    """One pipeline field's codec as the run encodes it (a read-only field's reading view), with its
    traits and the methods they name, each read once."""

    codec: Codec
    traits: CodecTraits
    plugin: str
    """The plugin that registered the codec, to name when its code ends the run."""

    def row_bytes(self, segment: Segment) -> int | None:
        """Bytes in one row of ``segment``'s payload (``traits.rows``); None where it has none."""
        return self.codec.row_bytes(segment) if self.traits.rows else None  # type: ignore[attr-defined]

    def encode_augmented(self, data: bytes, rng: np.random.Generator) -> Segment:
        """``data`` varied by ``rng``, where ``traits.augment`` lets the codec vary it; else ``encode``."""
        if self.traits.augment == "never":
            return self.codec.encode(data)
        return self.codec.encode_augmented(data, rng)  # type: ignore[attr-defined]


def field_codec(codec: Codec, plugin: str, read_only: bool) -> FieldCodec:
    """``codec`` for a field, through its reading view where the field is ``read_only``."""
    traits = codec_traits(codec)
    if read_only and traits.reading_view:
        codec = codec.for_reading()  # type: ignore[attr-defined]
        traits = codec_traits(codec)
    return FieldCodec(codec, traits, plugin)


def file_extension(codec: Codec, traits: CodecTraits, segment: Segment) -> str:
    """The extension (without dot) of the file ``codec`` writes for ``segment``."""
    return codec.extension_of(segment) if traits.segment_extension else codec.extension  # type: ignore[attr-defined]


Weights = Callable[[EncodedSample, np.random.Generator, int], np.ndarray]
"""A head's ``training_weights(sample, rng, row)``."""


def training_weights(head: TaskHead, defaults: HeadDefaults) -> Weights | None:
    """The head's ``training_weights`` where its defaults say it thins the context; else None."""
    return head.training_weights if defaults.thins_context else None  # type: ignore[attr-defined]
