"""The contract a modality codec fulfils. Codecs are registered by plugins; the core names none.

A codec turns the bytes of one shard field (a file) into a :class:`~mbp.protocol.Segment`, and a
segment back into a value (``decode``) or a file (``to_file``). Lossless settings must round-trip:
``to_file(encode(data)) == data`` for ``text``, ``image`` and ``wav``; pixel for pixel for ``pixels``.
``write_segments`` is the core's one use of ``to_file``: generated segments become files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mbp.errors import MbpError
from mbp.protocol import Segment, decode_lenient


@runtime_checkable
class Codec(Protocol):
    name: str
    extension: str
    """File extension (without dot) that ``to_file`` output should carry."""

    def encode(self, data: bytes) -> Segment:
        """Validate and convert one field's file bytes; raise CodecError on bad input. A function of
        ``data`` and the codec's params, nothing else: the core keeps what it makes of a field's bytes
        and reuses it in later epochs (``FieldCache``). Variation belongs in ``Augmenting``."""
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


@runtime_checkable
class Augmenting(Protocol):
    """Optional for a codec: vary a *training* sample the way real data varies (a shifted image, a
    faster speaker, a masked band), so that a small data set teaches what does not matter. The core
    calls it instead of ``encode`` for training samples only, never for evaluation, with a generator
    seeded by the sample's place in the stream, so a resumed run sees the same variations. Whether it
    is called follows an ``augment`` attribute: true for every training sample, false never (the
    field's encodings are then kept across epochs like any other codec's), None or no attribute as the
    run's ``data.augment`` says (``mbp.planning.variation``: from 15 passes over the training set)."""

    def encode_augmented(self, data: bytes, rng: np.random.Generator) -> Segment:
        """Like ``encode``, varied by ``rng``; raise CodecError on bad input."""
        ...


@runtime_checkable
class ReadingView(Protocol):
    """Optional for a codec: another encoding for fields the model only reads, never writes (the
    context of a ``vqa`` or ``classify`` answer). Audio is the case in point: a classifier learns
    words from a log-mel spectrogram in minutes and from raw samples hardly at all, while a model
    that generates audio needs the samples. The core asks for the view wherever a field is context."""

    def for_reading(self) -> Codec:
        """The codec to encode a read-only field with (``self`` when nothing changes)."""
        ...


@runtime_checkable
class ContextWeighting(Protocol):
    """Optional for a codec: the loss weight its bytes carry as the context of an answer, where the head
    leaves the weight to each field's codec (``vqa``/``classify`` with ``context_weight`` unset). A
    codec knows how much predicting its own bytes teaches about its content: a log-mel spectrogram's
    frames (``wav``'s reading view) gain from a heavier weight than raw pixels, whose many bytes then
    crowd out the answer's. ``None``: the head's default."""

    context_weight: float | None


@runtime_checkable
class RowLayout(Protocol):
    """Optional for a codec whose payloads come in rows of equal length: an image's rows of pixels, a
    spectrogram's frames. Where a pipeline leaves the byte-level stage's ``patch`` unset, ``mbp run``
    makes a patch one row (``mbp.planning.patch_plan``): the global stage then sees the image row by row,
    and the byte-level stage reads each row whole."""

    def row_bytes(self, segment: Segment) -> int | None:
        """Bytes in one row of ``segment``'s payload; None where it has no rows."""
        ...


def write_segments(
    tokens: list[int],
    skip: int,
    out_dir: Path,
    codec_for: Callable[[str], Codec],
    warn: Callable[[str], None],
) -> list[str]:
    """Write every segment of a token stream after the first ``skip`` as a file through its codec (a
    cut-off last one too, named ``-partial``); a segment its codec rejects keeps its raw payload."""
    decoded = decode_lenient(tokens)
    if decoded.broken:  # sampling can emit any token: keep every segment before the break
        warn(f"generated stream breaks the segment format ({decoded.broken}); kept what came before")
    segments = decoded.segments[skip:] + ([decoded.partial] if decoded.partial else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, segment in enumerate(segments):
        partial = decoded.partial is segment
        try:
            codec = codec_for(segment.codec)
            data = codec.to_file(segment)
            ext = codec.extension_of(segment) if isinstance(codec, SegmentExtension) else codec.extension
        except MbpError as error:
            warn(
                f"segment {index} ({segment.codec or '?'}{', cut off' if partial else ''}) not decodable: "
                f"{error}; raw payload kept"
            )
            data, ext = segment.payload, "bin"
        path = out_dir / f"segment-{index:02d}{'-partial' if partial else ''}.{ext}"
        path.write_bytes(data)
        written.append(str(path))
    return written
