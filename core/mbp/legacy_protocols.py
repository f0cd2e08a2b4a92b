"""The optional protocols that ``CodecTraits`` and ``HeadDefaults`` replace, kept for one release.

A plugin written against them (a ``context_weight`` attribute, a ``row_bytes`` method, a head's
``batch_size``) still loads and behaves the same: :mod:`mbp.traits` reads such a plugin's attributes
into the equivalent traits once, when the pipeline is resolved, and warns once per plugin class. The
Protocol classes stay importable from :mod:`mbp.api` so that such a plugin's imports still work; the
core tests no object against them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from mbp.codec import Codec, CodecTraits
from mbp.heads import HeadDefaults
from mbp.protocol import Segment
from mbp.sample import EncodedSample


@runtime_checkable
class SegmentExtension(Protocol):
    """Deprecated: ``CodecTraits(segment_extension=True)`` with the same ``extension_of`` method."""

    def extension_of(self, segment: Segment) -> str: ...


@runtime_checkable
class Augmenting(Protocol):
    """Deprecated: ``CodecTraits(augment=...)`` with the same ``encode_augmented`` method; an
    ``augment`` attribute of True, False or None read as ``"always"``, ``"never"`` or ``"run"``."""

    def encode_augmented(self, data: bytes, rng: np.random.Generator) -> Segment: ...


@runtime_checkable
class ReadingView(Protocol):
    """Deprecated: ``CodecTraits(reading_view=True)`` with the same ``for_reading`` method."""

    def for_reading(self) -> Codec: ...


@runtime_checkable
class ContextWeighting(Protocol):
    """Deprecated: ``CodecTraits(context_weight=...)``."""

    context_weight: float | None


@runtime_checkable
class RowLayout(Protocol):
    """Deprecated: ``CodecTraits(rows=True)`` with the same ``row_bytes`` method."""

    def row_bytes(self, segment: Segment) -> int | None: ...


@runtime_checkable
class FieldHead(Protocol):
    """Deprecated: ``HeadDefaults(answers=...)``."""

    field: str


@runtime_checkable
class RegularizedHead(Protocol):
    """Deprecated: ``HeadDefaults(dropout=...)``."""

    dropout: float


@runtime_checkable
class BatchingHead(Protocol):
    """Deprecated: ``HeadDefaults(batch_size=...)``."""

    batch_size: int


@runtime_checkable
class SplittingHead(Protocol):
    """Deprecated: ``HeadDefaults(split_samples=...)``."""

    split_samples: bool


@runtime_checkable
class ThinningHead(Protocol):
    """Deprecated: ``HeadDefaults(thins_context=True)`` with the same ``training_weights`` method."""

    def training_weights(self, sample: EncodedSample, rng: np.random.Generator, row: int) -> np.ndarray: ...


CODEC_ATTRIBUTES = (
    "context_weight",
    "augment",
    "encode_augmented",
    "row_bytes",
    "for_reading",
    "extension_of",
)
"""What a codec written against the old protocols has, instead of ``traits``."""
HEAD_ATTRIBUTES = ("field", "batch_size", "dropout", "split_samples", "training_weights", "selection")
"""What a head written against the old protocols (and the undeclared ``selection``) has, instead of
``defaults``."""


def old_codec_traits(codec: Any) -> CodecTraits:
    """The traits equivalent to what ``codec`` offers through the old protocols."""
    augment: Any = "never"
    if hasattr(codec, "encode_augmented"):
        setting = getattr(codec, "augment", None)
        augment = "run" if setting is None else ("always" if setting else "never")
    return CodecTraits(
        context_weight=getattr(codec, "context_weight", None),
        augment=augment,
        rows=hasattr(codec, "row_bytes"),
        reading_view=hasattr(codec, "for_reading"),
        segment_extension=hasattr(codec, "extension_of"),
    )


def old_head_defaults(head: Any) -> HeadDefaults:
    """The defaults equivalent to what ``head`` offers through the old protocols."""
    fallback = HeadDefaults()
    selection = getattr(head, "selection", None) or (fallback.selection_metric, fallback.selection_mode)
    return HeadDefaults(
        answers=getattr(head, "field", None),
        batch_size=getattr(head, "batch_size", fallback.batch_size),
        dropout=getattr(head, "dropout", fallback.dropout),
        split_samples=bool(getattr(head, "split_samples", False)),
        thins_context=hasattr(head, "training_weights"),
        selection_metric=selection[0],
        selection_mode=selection[1],
    )


def old_names(plugin: Any, names: tuple[str, ...]) -> list[str]:
    """Which of the old protocols' ``names`` ``plugin`` has."""
    return [name for name in names if hasattr(plugin, name)]
