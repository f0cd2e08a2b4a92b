"""Built-in plugin: the ``text`` codec (UTF-8, validated)."""

from __future__ import annotations

from mbp.api import Codec, CodecError, CodecTraits, Register, Segment, WordStarts, hookimpl
from pydantic import BaseModel, ConfigDict, Field


class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strip: bool = Field(default=False, description="strip surrounding whitespace (not lossless)")


class TextCodec:
    name = "text"
    extension = "txt"
    traits = CodecTraits(boundaries=WordStarts())
    """A byte-level patch a word and the delimiters after it, where the pipeline leaves the patch unset."""

    def __init__(self, params: TextParams) -> None:
        self.strip = params.strip

    def encode(self, data: bytes) -> Segment:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError(f"not valid UTF-8 at byte {error.start}") from None
        if self.strip:
            data = text.strip().encode("utf-8")
        return Segment(self.name, bytes(data))

    def decode(self, segment: Segment) -> str:
        try:
            return segment.payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError(f"text segment is not valid UTF-8 at byte {error.start}") from None

    def to_file(self, segment: Segment) -> bytes:
        self.decode(segment)
        return segment.payload


@hookimpl
def mbp_register_codecs(register: Register[Codec]) -> None:
    register("text", TextCodec, TextParams)
