"""The contract a modality codec fulfils. Codecs are registered by plugins; the core names none.

A codec turns the bytes of one shard field (a file) into a :class:`~mbp.protocol.Segment`, and a
segment back into a value (``decode``) or a file (``to_file``). Lossless settings must round-trip:
``to_file(encode(data)) == data`` for ``text``, ``image`` and ``wav``; pixel for pixel for ``pixels``.
``mbp.segment_files.write_segments`` is the core's one use of ``to_file``: generated segments become files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from mbp.boundaries import BoundaryRule
from mbp.protocol import Segment

Augment = Literal["never", "run", "always"]


@dataclass(frozen=True)
class CodecTraits:
    """What a codec declares about itself, as its ``traits`` attribute: one value, read once when the
    pipeline is resolved, never asked again. A codec without ``traits`` has these defaults. A field set
    here names a method the codec then has (``rows``: ``row_bytes``); resolving a pipeline refuses a
    codec whose traits name a method it lacks, naming the codec."""

    context_weight: float | None = None
    """The loss weight, in [0, 1], of this codec's bytes as the context of an answer, where the head
    leaves the weight to each field's codec (``vqa``/``classify`` with ``context_weight`` unset). A codec
    knows how much predicting its own bytes teaches about its content: a log-mel spectrogram's frames
    (``wav``'s reading view) gain from a heavier weight than raw pixels. None: the head's default."""
    augment: Augment = "never"
    """When a *training* sample is encoded with ``encode_augmented(data, rng)`` instead of ``encode``:
    ``"always"``, ``"never"`` (its encodings are kept across epochs like any other codec's), or
    ``"run"``: as the run's ``data.augment`` says (unset: from 15 passes over the training set).
    Evaluation always uses ``encode``."""
    rows: bool = False
    """Payloads come in rows of equal length (an image's rows, a spectrogram's frames), and
    ``row_bytes(segment)`` says how long: where a pipeline leaves the byte-level stage's ``patch`` unset,
    ``mbp run`` makes a patch one row."""
    reading_view: bool = False
    """``for_reading()`` gives another codec for fields the model only reads, never writes (the context
    of a ``vqa`` or ``classify`` answer): ``wav`` reads as a log-mel spectrogram there."""
    segment_extension: bool = False
    """``extension_of(segment)`` names a generated file's extension (``png`` or ``jpg`` for an image);
    else ``Codec.extension`` does."""
    boundaries: BoundaryRule | None = None
    """Where the byte-level patches of this codec's payloads start, where a pipeline leaves the
    byte-level ``patch`` unset (``mbp.boundaries``): ``WordStarts()`` for text, ``FixedLength(n)`` for a
    fixed structure. None: one row where the codec has ``rows`` (the row ``row_bytes`` gives on the
    data, the same for every row of a pipeline's field), else fixed patches of the default length (raw
    PCM, file bytes). A rule is online, decided by the bytes before each position, so generation places
    boundaries where training saw them; segment headers and markers start patches of their own (a text
    payload's first word shares its header's)."""


@runtime_checkable
class Codec(Protocol):
    """The methods every codec has. Its optional behaviour is declared in ``traits: CodecTraits`` (an
    attribute; absent: ``CodecTraits()``) and carried out by the methods those traits name:

    - ``encode_augmented(data: bytes, rng: np.random.Generator) -> Segment`` (``augment``): like
      ``encode``, varied the way real data varies (a shifted image, a faster speaker) by ``rng``, seeded
      by the sample's place in the stream so that a resumed run sees the same variations;
    - ``row_bytes(segment) -> int | None`` (``rows``): bytes in one row of the payload, None where it
      has none;
    - ``for_reading() -> Codec`` (``reading_view``): the codec for a read-only field (``self`` where
      nothing changes); its own ``traits`` apply there;
    - ``extension_of(segment) -> str`` (``segment_extension``): the file extension, without dot.

    Each raises CodecError on bad input.
    """

    name: str
    extension: str
    """File extension (without dot) that ``to_file`` output should carry."""

    def encode(self, data: bytes) -> Segment:
        """Validate and convert one field's file bytes; raise CodecError on bad input. A function of
        ``data`` and the codec's params, nothing else: the core keeps what it makes of a field's bytes
        and reuses it in later epochs (``FieldCache``). Variation belongs in ``encode_augmented``."""
        ...

    def decode(self, segment: Segment) -> Any:
        """The segment as a value (str, pixel array, file bytes); raise CodecError on bad input."""
        ...

    def to_file(self, segment: Segment) -> bytes:
        """The segment as file bytes that a user can open; raise CodecError on bad input."""
        ...
