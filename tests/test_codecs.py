"""Issue 3: the built-in codecs round-trip, and reject bad input with the project's own errors."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from mbp.errors import MbpError
from mbp.protocol import Segment
from PIL import Image


def codec(components, name: str, **params):
    return components.build("codecs", {"type": name, **params})


def image_bytes(fmt: str, mode: str = "RGB", size: tuple[int, int] = (7, 5)) -> tuple[bytes, Image.Image]:
    rng = np.random.default_rng(1)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    if fmt == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue(), image


def wav_bytes(subtype: str = "PCM_16", channels: int = 2, rate: int = 8000, frames: int = 400) -> bytes:
    rng = np.random.default_rng(2)
    data = rng.uniform(-0.9, 0.9, (frames, channels))
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def test_text_round_trip_and_invalid_utf8(components) -> None:
    text = codec(components, "text")
    data = "naïve ☃ — ok\n".encode()
    segment = text.encode(data)
    assert text.to_file(segment) == data and text.decode(segment) == data.decode()
    with pytest.raises(MbpError, match="not valid UTF-8 at byte 1"):
        text.encode(b"a\xff")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_pixels_decodes_every_format_pixel_for_pixel(components, fmt: str) -> None:
    data, _ = image_bytes(fmt)
    pixels = codec(components, "pixels")
    segment = pixels.encode(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert segment.meta == {"w": "7", "h": "5", "mode": "RGB"}
    assert np.array_equal(pixels.decode(segment), expected)
    # the PNG it writes decodes to the same pixels again
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pixels.to_file(segment)))), expected)


def test_pixels_resize_and_grey_mode(components) -> None:
    data, _ = image_bytes("PNG", size=(20, 10))
    segment = codec(components, "pixels", mode="L", size=(8, 4)).encode(data)
    assert segment.meta == {"w": "8", "h": "4", "mode": "L"} and len(segment.payload) == 32


def test_pixels_rejects_inconsistent_segments(components) -> None:
    pixels = codec(components, "pixels")
    with pytest.raises(MbpError, match="payload has 5 bytes, header says 6"):
        pixels.decode(Segment("pixels", b"12345", {"w": "2", "h": "1", "mode": "RGB"}))


def test_image_keeps_file_bytes_and_can_reencode(components) -> None:
    data, _ = image_bytes("PNG")
    image = codec(components, "image")
    segment = image.encode(data)
    assert image.to_file(segment) == data and segment.meta == {"format": "png"}
    jpeg = codec(components, "image", reencode="jpeg", quality=50).encode(data)
    assert jpeg.meta == {"format": "jpeg"} and jpeg.payload[:2] == b"\xff\xd8"


def test_image_rejects_decompression_bombs(components) -> None:
    data, _ = image_bytes("PNG", size=(100, 100))
    with pytest.raises(MbpError, match="100x100 = 10000 pixels, over the limit 5000"):
        codec(components, "image", max_pixels=5000).encode(data)
    with pytest.raises(MbpError, match="not a readable image"):
        codec(components, "image").encode(b"GIF89a not really")


@pytest.mark.parametrize(("subtype", "channels"), [("PCM_16", 2), ("PCM_16", 1), ("PCM_U8", 1)])
def test_wav_round_trips_byte_for_byte(components, subtype: str, channels: int) -> None:
    data = wav_bytes(subtype, channels)
    wav = codec(components, "wav")
    segment = wav.encode(data)
    assert segment.meta["ch"] == str(channels) and segment.meta["rate"] == "8000"
    assert wav.to_file(segment) == data
    assert len(segment.payload) == 400 * channels * (1 if subtype == "PCM_U8" else 2)


@pytest.mark.parametrize(
    ("subtype", "fmt", "width", "dtype"),
    [
        ("PCM_24", "s24", 3, "int32"),
        ("PCM_32", "s32", 4, "int32"),
        ("FLOAT", "f32", 4, "float32"),
        ("DOUBLE", "f64", 8, "float64"),
    ],
)
def test_wav_keeps_24_bit_and_float_samples(
    components, subtype: str, fmt: str, width: int, dtype: str
) -> None:
    """Issue 11: the default settings stored these as 16-bit, losing bits without a word."""
    data = wav_bytes(subtype, 2)
    wav = codec(components, "wav")
    segment = wav.encode(data)
    assert segment.meta == {"rate": "8000", "ch": "2", "fmt": fmt}
    assert len(segment.payload) == 400 * 2 * width
    restored = wav.to_file(segment)
    assert sf.info(io.BytesIO(restored)).subtype == subtype
    original, _ = sf.read(io.BytesIO(data), dtype=dtype)
    assert np.array_equal(sf.read(io.BytesIO(restored), dtype=dtype)[0], original)
    assert restored == data


def test_wav_file_payload_keeps_any_wav(components) -> None:
    data = wav_bytes("FLOAT", 2)
    wav = codec(components, "wav", payload="file")
    assert wav.to_file(wav.encode(data)) == data


def test_wav_resample_downmix_and_bits(components) -> None:
    wav = codec(components, "wav", sample_rate=4000, mono=True, bits=8)
    segment = wav.encode(wav_bytes("PCM_16", 2, rate=8000, frames=800))
    assert segment.meta == {"rate": "4000", "ch": "1", "fmt": "u8"}
    assert len(segment.payload) == 400
    info = sf.info(io.BytesIO(wav.to_file(segment)))
    assert (info.samplerate, info.channels, info.subtype) == (4000, 1, "PCM_U8")


def tone_wav(hertz: float, amplitude: float, rate: int = 8000, seconds: float = 0.5) -> bytes:
    time = np.arange(int(rate * seconds)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, amplitude * np.sin(2 * np.pi * hertz * time), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def test_wav_logmel_is_a_spectrogram_frame_by_frame(components) -> None:
    """Issue 14: 0.5 s at a 10 ms hop is 1 + (4000 - 200) // 80 = 48 frames of 32 bands; a 1 kHz tone
    peaks in the band whose centre is nearest 1 kHz, a 3 kHz tone in a higher one."""
    from mbp_audio.logmel import mel_filterbank

    wav = codec(components, "wav", payload="logmel", mel_bands=32, hop_ms=10)
    segment = wav.encode(tone_wav(1000.0, 0.5))
    assert segment.meta == {"payload": "logmel", "rate": "8000", "bands": "32"}
    frames = np.frombuffer(segment.payload, dtype=np.uint8).reshape(48, 32)
    centres = np.fft.rfftfreq(256, 1 / 8000)[mel_filterbank(8000, 32, 256).argmax(axis=1)]
    assert frames.argmax(axis=1).tolist() == [int(np.abs(centres - 1000).argmin())] * 48
    high = np.frombuffer(wav.encode(tone_wav(3000.0, 0.5)).payload, dtype=np.uint8).reshape(48, 32)
    assert high.argmax(axis=1).min() > frames.argmax(axis=1).max()
    assert frames.max() == 255  # the loudest cell is the top byte


def test_wav_logmel_ignores_gain_and_saves_a_png(components) -> None:
    wav = codec(components, "wav", payload="logmel")  # 16 bands every 20 ms
    loud, quiet = wav.encode(tone_wav(440.0, 0.8)), wav.encode(tone_wav(440.0, 0.1))
    assert (
        np.abs(
            np.frombuffer(loud.payload, np.uint8).astype(int) - np.frombuffer(quiet.payload, np.uint8)
        ).max()
        <= 1
    )  # relative levels: 18 dB quieter is the same bytes, up to rounding
    image = Image.open(io.BytesIO(wav.to_file(loud)))
    assert image.format == "PNG" and image.size == (len(loud.payload) // 16, 16)
    assert np.array_equal(np.asarray(image), wav.decode(loud))
    with pytest.raises(MbpError, match="not one or more whole frames of 16 bands"):
        wav.to_file(Segment("wav", loud.payload[:-1], loud.meta))
    with pytest.raises(MbpError, match="payload of 0 bytes"):  # PIL cannot write an empty image
        wav.to_file(Segment("wav", b"", loud.meta))


def test_wav_rejects_non_audio(components) -> None:
    with pytest.raises(MbpError, match="not readable audio"):
        codec(components, "wav").encode(b"RIFF....WAVEfmt nonsense")


@pytest.mark.parametrize("name", ["text", "pixels", "image", "wav"])
@given(
    data=st.binary(max_size=400),
    meta=st.dictionaries(
        st.sampled_from(["w", "h", "mode", "rate", "ch", "fmt", "format", "payload", "bands"]),
        st.text("0123456789abcdefLRGBsu", max_size=6) | st.sampled_from(["logmel", "file", "png"]),
        max_size=5,
    ),
)
@settings(max_examples=150, deadline=None)
def test_random_input_raises_only_project_errors(
    components, name: str, data: bytes, meta: dict[str, str]
) -> None:
    instance = codec(components, name)
    for call in (
        lambda: instance.encode(data),
        lambda: instance.decode(Segment(name, data, meta)),
        lambda: instance.to_file(Segment(name, data, meta)),
    ):
        with contextlib.suppress(MbpError):
            call()


def test_generated_segments_are_written_as_files_through_their_codecs(components, tmp_path) -> None:
    from mbp.protocol import END, HDR, SEG, prompt_stream
    from mbp.segment_files import write_segments

    from tests.shardkit import png

    picture = png()
    opened = prompt_stream([Segment("text", b"draw")], "text", b"a red").tolist()
    tokens = [*opened, *b" square", END, SEG, *b"image format=png", HDR, *picture, END]
    tokens += [SEG, *b"image", HDR, *picture, END, SEG, *b"text", HDR, *b"cut sho"]
    warnings: list[str] = []
    written = write_segments(tokens, 1, tmp_path, lambda name: codec(components, name), warnings.append)
    names = ["segment-00.txt", "segment-01.png", "segment-02.bin", "segment-03-partial.txt"]
    assert written == [str(tmp_path / name) for name in names]
    contents = [(tmp_path / name).read_bytes() for name in names]
    assert contents == [b"a red square", picture, picture, b"cut sho"]
    assert warnings == [
        "segment 2 (image) not decodable: image segment header has no format; raw payload kept"
    ]
