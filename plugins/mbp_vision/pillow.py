"""Opening untrusted image bytes with Pillow: known formats only, and a pixel budget checked first."""

from __future__ import annotations

import io
import warnings

from mbp.api import CodecError
from PIL import Image

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def open_image(data: bytes, max_pixels: int, *, decode: bool = True) -> Image.Image:
    """Open an image and, with ``decode``, load its pixels (else run Pillow's cheaper integrity check);
    reject unknown formats and decompression bombs before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise CodecError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit {max_pixels}"
                )
            if decode:
                image.load()
            else:
                image.verify()
    except CodecError:
        raise
    except Image.DecompressionBombError as error:
        raise CodecError(f"image rejected as a decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise CodecError(f"not a readable image (expected one of {', '.join(FORMATS)})") from None
    except Exception as error:
        raise CodecError(f"not a readable image: {type(error).__name__}: {error}") from None
    return image
