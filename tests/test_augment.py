"""Issue 14: codecs vary training samples (``Augmenting``), never evaluation ones, and a resumed run
sees the same variations as an uninterrupted one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
from mbp.data.batches import Position, encoded_stream
from mbp.data.skips import SkipLog
from mbp.resolve import resolve
from mbp.traits import codec_traits
from PIL import Image

from tests.shardkit import write_tar

REGISTRY = """\
pipelines:
  digits:
    fields:
      image: {type: pixels, mode: L, augment: true}
      answer: {type: text}
    head: {type: vqa}
    model:
      stages:
        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, patch: 4}
"""


def glyph(seed: int, size: int = 16) -> bytes:
    """A bright square on black, somewhere inside a 16x16 image."""
    pixels = np.zeros((size, size), np.uint8)
    corner = 4 + seed % 5
    pixels[corner : corner + 5, corner : corner + 4] = 200 + seed
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pixels_shift_training_images_by_at_most_an_eighth(components) -> None:
    codec = components.build("codecs", {"type": "pixels", "mode": "L", "augment": True})
    assert codec_traits(codec).augment == "always"
    data = glyph(0)
    plain = codec.decode(codec.encode(data)).astype(int)
    moves = set()
    for seed in range(40):
        varied = codec.encode_augmented(data, np.random.default_rng(seed))
        image = codec.decode(varied).astype(int)
        assert varied.meta == {"w": "16", "h": "16", "mode": "L"} and image.sum() == plain.sum()
        found = [
            (down, right)
            for down in range(-2, 3)
            for right in range(-2, 3)
            if np.array_equal(np.roll(plain, (down, right), axis=(0, 1)), image)
        ]
        assert len(found) == 1  # exactly a shift (the square is away from the edges)
        moves.add(found[0])
    assert len(moves) > 10 and max(max(abs(d), abs(r)) for d, r in moves) == 2  # 16 // 8
    off = components.build("codecs", {"type": "pixels", "mode": "L", "augment": False})
    assert off.encode_augmented(data, np.random.default_rng(0)) == off.encode(data)
    unset = components.build("codecs", {"type": "pixels", "mode": "L"})  # the run decides; asked, it varies
    assert codec_traits(unset).augment == "run" and codec_traits(off).augment == "never"
    assert unset.encode_augmented(data, np.random.default_rng(1)) == codec.encode_augmented(
        data, np.random.default_rng(1)
    )


def test_png_files_are_shifted_and_saved_again_jpeg_stays(components) -> None:
    codec = components.build("codecs", {"type": "image", "augment": True})
    data = glyph(1)
    plain = np.asarray(Image.open(io.BytesIO(data))).astype(int)
    payloads = set()
    for seed in range(12):
        varied = codec.encode_augmented(data, np.random.default_rng(seed))
        image = np.asarray(Image.open(io.BytesIO(varied.payload))).astype(int)
        assert varied.meta == {"format": "png"} and image.sum() == plain.sum()
        assert any(
            np.array_equal(np.roll(plain, (d, r), axis=(0, 1)), image)
            for d in range(-2, 3)
            for r in range(-2, 3)
        )
        payloads.add(varied.payload)
    assert len(payloads) > 5  # new file bytes for the same picture
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    assert codec.encode_augmented(jpeg, np.random.default_rng(0)) == codec.encode(jpeg)
    lossy = components.build("codecs", {"type": "image", "reencode": "jpeg"})  # never varied: kept
    assert codec_traits(lossy).augment == "never"
    assert lossy.encode_augmented(data, np.random.default_rng(0)) == lossy.encode(data)


def test_logmel_training_clips_vary_and_pcm_stays_exact(components) -> None:
    time = np.arange(4000) / 8000
    buffer = io.BytesIO()
    sf.write(buffer, 0.5 * np.sin(2 * np.pi * 700 * time), 8000, subtype="PCM_16", format="WAV")
    data = buffer.getvalue()
    assert (
        codec_traits(components.build("codecs", {"type": "wav", "payload": "logmel"})).augment == "never"
    )  # measured
    logmel = components.build("codecs", {"type": "wav", "payload": "logmel", "augment": True})
    plain = logmel.encode(data)
    lengths = {len(logmel.encode_augmented(data, np.random.default_rng(s)).payload) for s in range(8)}
    assert len(lengths) > 1 and all(
        abs(n - len(plain.payload)) <= 0.1 * len(plain.payload) + 16 for n in lengths
    )  # 0.9-1.1x, +-1 frame
    varied = np.frombuffer(logmel.encode_augmented(data, np.random.default_rng(3)).payload, np.uint8)
    assert (varied == 0).sum() > (np.frombuffer(plain.payload, np.uint8) == 0).sum()  # masks
    pcm = components.build("codecs", {"type": "wav"})
    assert pcm.encode_augmented(data, np.random.default_rng(0)) == pcm.encode(data)


def test_training_stream_varies_and_replays_on_resume(tmp_path: Path, components) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    samples = [{"__key__": f"s{i}".encode(), "image.png": glyph(i), "answer.txt": b"one"} for i in range(6)]
    write_tar(tmp_path / "s.tar", samples)
    encoder = resolve(str(registry), "digits", components=components).encoder

    def stream(augment: bool, start: Position | None = None) -> list[bytes]:
        items = encoded_stream(
            [str(tmp_path / "s.tar")], encoder, 512, SkipLog(), augment=augment, start=start
        )
        return [sample.tokens.tobytes() for (sample, _), _ in zip(items, range(9), strict=False)]

    plain, trained = stream(False), stream(True)
    assert plain[:6] == plain[6:9] + plain[3:6]  # without augmentation every epoch is the same
    assert sum(a != b for a, b in zip(plain, trained, strict=True)) >= 5  # varied (a shift may be 0)
    assert trained[6:9] != trained[:3]  # the second epoch varies the same images differently
    assert stream(True) == trained  # the same seed, the same variations
    assert stream(True, Position(1, 1))[:2] == trained[7:9]  # resuming mid-epoch replays them
