"""The contract a modality codec fulfils. Codecs are registered by plugins; the core names none.

A codec turns the bytes of one shard field (a file) into a :class:`~mbp.protocol.Segment`, and a
segment back into a value (``decode``) or a file (``to_file``). Lossless settings must round-trip:
``to_file(encode(data)) == data`` for ``text``, ``image`` and ``wav``; pixel for pixel for ``pixels``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mbp.protocol import Segment


@runtime_checkable
class Codec(Protocol):
    name: str
    extension: str
    """File extension (without dot) that ``to_file`` output should carry."""

    def encode(self, data: bytes) -> Segment:
        """Validate and convert one field's file bytes; raise CodecError on bad input."""
        ...

    def decode(self, segment: Segment) -> Any:
        """The segment as a value (str, pixel array, file bytes); raise CodecError on bad input."""
        ...

    def to_file(self, segment: Segment) -> bytes:
        """The segment as file bytes that a user can open; raise CodecError on bad input."""
        ...


@runtime_checkable
class SegmentExtension(Protocol):
    """Optional for a codec: a file extension that depends on the segment (``png`` or ``jpg`` for an
    image); without it ``to_file`` output is named with ``Codec.extension``."""

    def extension_of(self, segment: Segment) -> str:
        """The extension (without dot) for ``segment``; raise CodecError when the segment names none."""
        ...
