"""An example third-party mbp plugin: the ``rot13`` codec stores UTF-8 text ROT13-rotated.

Lossless: ``to_file(encode(data)) == data``. It shows the whole plugin contract in one file:
a pydantic params model, a codec class, and one hook implementation.
"""

from __future__ import annotations

import codecs

from mbp.api import Codec, CodecError, Register, Segment, hookimpl
from pydantic import BaseModel, ConfigDict


class Rot13Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = 1


class Rot13Codec:
    name = "rot13"
    extension = "txt"

    def __init__(self, params: Rot13Params) -> None:
        self.rounds = params.rounds

    def _rotate(self, text: str) -> str:
        for _ in range(self.rounds):
            text = codecs.encode(text, "rot13")
        return text

    def encode(self, data: bytes) -> Segment:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError(f"not valid UTF-8 at byte {error.start}") from None
        return Segment(self.name, self._rotate(text).encode("utf-8"), {"rounds": str(self.rounds)})

    def decode(self, segment: Segment) -> str:
        try:
            text = segment.payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError(f"rot13 segment is not UTF-8 at byte {error.start}") from None
        return self._rotate(text) if self.rounds % 2 else text

    def to_file(self, segment: Segment) -> bytes:
        return self.decode(segment).encode("utf-8")


@hookimpl
def mbp_register_codecs(register: Register[Codec]) -> None:
    register("rot13", Rot13Codec, Rot13Params)
