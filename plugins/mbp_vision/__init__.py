"""Built-in plugin: the ``pixels`` (raw row-major pixels) and ``image`` (file bytes) codecs."""

from __future__ import annotations

from mbp.api import Codec, Register, hookimpl

from mbp_vision.image import ImageCodec, ImageParams
from mbp_vision.pixels import PixelsCodec, PixelsParams


@hookimpl
def mbp_register_codecs(register: Register[Codec]) -> None:
    register("pixels", PixelsCodec, PixelsParams)
    register("image", ImageCodec, ImageParams)
