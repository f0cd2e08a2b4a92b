"""``pixels``: any image file decoded to raw row-major pixels; the header carries w, h and mode."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from mbp.api import CodecError, CodecTraits, Segment
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from mbp_vision.pillow import open_image

CHANNELS = {"L": 1, "RGB": 3}
AUGMENT: dict[bool | None, Literal["never", "run", "always"]] = {None: "run", True: "always", False: "never"}
"""A codec's ``augment`` parameter as ``CodecTraits.augment``: unset leaves it to the run."""


class PixelsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["L", "RGB"] = "RGB"
    size: tuple[int, int] | None = Field(default=None, description="resize to (width, height)")
    max_pixels: int = Field(default=16_000_000, gt=0)
    # unset: the run decides from its passes (``data.augment``): shifts slow a short run (the bundled
    # demo 0.950 -> 0.860 at 2.5 passes) and help a long one (capitals from held-out fonts 0.989 -> 0.994)
    augment: bool | None = Field(
        default=None,
        description=(
            "shift training images by up to 1/8 of their side, edges repeated; "
            "unset: as the run's data.augment says"
        ),
    )


class PixelsCodec:
    name = "pixels"
    extension = "png"

    def __init__(self, params: PixelsParams) -> None:
        self.mode = params.mode
        self.size = params.size
        self.max_pixels = params.max_pixels
        # boundaries unset: a byte-level patch is one row, planned from the data's row length
        self.traits = CodecTraits(augment=AUGMENT[params.augment], rows=True)

    def encode(self, data: bytes) -> Segment:
        return self._segment(np.asarray(self._open(data)))

    def encode_augmented(self, data: bytes, rng: np.random.Generator) -> Segment:
        """A training image moved by a few pixels: where a digit or object sits is not what it is, and
        a model that saw each image at one place learns that it is."""
        if self.traits.augment == "never":
            return self.encode(data)
        return self._segment(shifted(np.asarray(self._open(data)), rng))

    def _open(self, data: bytes) -> Image.Image:
        image = open_image(data, self.max_pixels).convert(self.mode)
        if self.size is not None and image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        return image

    def _segment(self, pixels: np.ndarray) -> Segment:
        height, width = pixels.shape[:2]
        return Segment(self.name, pixels.tobytes(), {"w": str(width), "h": str(height), "mode": self.mode})

    def decode(self, segment: Segment) -> np.ndarray:
        """The pixels as an array of shape (h, w) for L or (h, w, 3) for RGB."""
        try:
            width, height, mode = int(segment.meta["w"]), int(segment.meta["h"]), segment.meta["mode"]
            channels = CHANNELS[mode]
        except (KeyError, ValueError):
            raise CodecError(
                f"pixels header needs w, h and mode in {sorted(CHANNELS)}: {segment.meta}"
            ) from None
        if width <= 0 or height <= 0 or width * height > self.max_pixels:
            raise CodecError(f"pixels header size {width}x{height} is out of range")
        expected = width * height * channels
        if len(segment.payload) != expected:
            raise CodecError(f"pixels payload has {len(segment.payload)} bytes, header says {expected}")
        array = np.frombuffer(segment.payload, dtype=np.uint8)
        return array.reshape((height, width) if channels == 1 else (height, width, channels))

    def row_bytes(self, segment: Segment) -> int | None:
        """One row of pixels: the width times the channels of the mode."""
        width, channels = segment.meta.get("w", ""), CHANNELS.get(segment.meta.get("mode", ""))
        return int(width) * channels if width.isdigit() and int(width) > 0 and channels else None

    def to_file(self, segment: Segment) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.decode(segment), mode=segment.meta["mode"]).save(buffer, format="PNG")
        return buffer.getvalue()


def shifted(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``pixels`` moved by up to 1/8 of the shorter side (at least 1) in each direction; the edge rows
    and columns are repeated into the uncovered strip, which keeps a plain background plain whatever
    its colour."""
    most = max(1, min(pixels.shape[:2]) // 8)
    down, right = (int(value) for value in rng.integers(-most, most + 1, size=2))
    height, width = pixels.shape[:2]
    pad = [(most, most), (most, most)] + [(0, 0)] * (pixels.ndim - 2)
    padded = np.pad(pixels, pad, mode="edge")
    top, left = most - down, most - right
    return np.ascontiguousarray(padded[top : top + height, left : left + width])
