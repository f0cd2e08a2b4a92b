"""``image``: the image file's bytes as they are (validated by Pillow), or re-encoded."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from mbp.api import CodecError, CodecTraits, Segment
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from mbp_vision.pillow import open_image
from mbp_vision.pixels import AUGMENT, shifted

SAVE_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reencode: Literal["jpeg", "png", "webp"] | None = None
    quality: int = Field(default=85, ge=1, le=100)
    max_pixels: int = Field(default=16_000_000, gt=0)
    # unset like ``pixels``': the run decides from its passes; PNG files of 1,500 handwritten digits,
    # which 30 passes memorise, scored 0.222 held out plain and 0.253 saved again shifted
    augment: bool | None = Field(
        default=None,
        description=(
            "shift training images by up to 1/8 of their side and save them again (PNG, BMP); "
            "unset: as the run's data.augment says"
        ),
    )


class ImageCodec:
    name = "image"
    extension = "img"

    def __init__(self, params: ImageParams) -> None:
        self.reencode = params.reencode
        self.quality = params.quality
        self.max_pixels = params.max_pixels
        # a re-encoded (lossy) image is never varied: saying so keeps its encodings across epochs
        augment = False if params.reencode is not None else params.augment
        self.traits = CodecTraits(augment=AUGMENT[augment], segment_extension=True)

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

    def encode_augmented(self, data: bytes, rng: np.random.Generator) -> Segment:
        """A lossless training image (PNG, BMP) moved by a few pixels and saved again in its format:
        the same picture in new file bytes, which is what a model of file bytes must learn to see
        through. Lossy and re-encoded images stay as ``encode`` makes them."""
        if self.traits.augment == "never":
            return self.encode(data)
        image = open_image(data, self.max_pixels)
        fmt = (image.format or "").upper()
        if fmt not in ("PNG", "BMP") or image.mode not in ("1", "L", "RGB", "RGBA", "P", "LA"):
            return self.encode(data)
        pixels = np.asarray(image)
        moved = Image.fromarray(shifted(pixels, rng), mode=image.mode)
        if image.mode == "P":
            moved.putpalette(image.getpalette() or [])
        buffer = io.BytesIO()
        moved.save(buffer, format=fmt)
        return Segment(self.name, buffer.getvalue(), {"format": fmt.lower()})

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
