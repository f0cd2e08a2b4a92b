"""``image``: the image file's bytes as they are (validated by Pillow), or re-encoded."""

from __future__ import annotations

import io
from typing import Literal

from mbp.api import CodecError, Segment
from pydantic import BaseModel, ConfigDict, Field

from mbp_vision.pillow import open_image

SAVE_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reencode: Literal["jpeg", "png", "webp"] | None = None
    quality: int = Field(default=85, ge=1, le=100)
    max_pixels: int = Field(default=16_000_000, gt=0)


class ImageCodec:
    name = "image"
    extension = "img"

    def __init__(self, params: ImageParams) -> None:
        self.reencode = params.reencode
        self.quality = params.quality
        self.max_pixels = params.max_pixels

    def encode(self, data: bytes) -> Segment:
        image = open_image(data, self.max_pixels, decode=self.reencode is not None)
        fmt = (image.format or "").lower()
        if self.reencode is None:
            return Segment(self.name, bytes(data), {"format": fmt})
        if self.reencode == "jpeg" and image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=SAVE_FORMAT[self.reencode], quality=self.quality)
        return Segment(self.name, buffer.getvalue(), {"format": self.reencode})

    def decode(self, segment: Segment) -> bytes:
        open_image(segment.payload, self.max_pixels, decode=False)
        return segment.payload

    def to_file(self, segment: Segment) -> bytes:
        return self.decode(segment)

    @staticmethod
    def extension_of(segment: Segment) -> str:
        fmt = segment.meta.get("format", "")
        if not fmt:
            raise CodecError("image segment header has no format")
        return {"jpeg": "jpg"}.get(fmt, fmt)
