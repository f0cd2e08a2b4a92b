"""Make the small mixed-modality shards bundled with mbp (deterministic; a few MB).

Each sample is one question with its answer about one of:
- a scene of coloured shapes drawn with Pillow, stored as a PNG and fed as raw pixels (field ``scene``),
- the same kind of scene fed as PNG file bytes (field ``photo``),
- a tone, stored as 8-bit mono WAV (field ``tone``),
- a short text (field ``passage``).

Run: python examples/make_bundled_data.py core/mbp/bundled
"""

from __future__ import annotations

import gzip
import io
import random
import sys
import tarfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 16
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
TONES = {"low": 220.0, "high": 880.0}
RATE = 4000


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def scene(rng: random.Random) -> tuple[bytes, str, str]:
    """A PNG scene and one question about it with its answer."""
    image = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    count = rng.randint(1, 3)
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    slots = rng.sample([(0, 0), (8, 0), (0, 8), (8, 8)], count)
    for sx, sy in slots:
        draw_shape(draw, shape, (sx + 1, sy + 1, sx + 6, sy + 6), COLOURS[colour])
    kind = rng.choice(("colour", "shape", "count"))
    question, answer = {
        "colour": ("what colour are the shapes?", colour),
        "shape": ("what shape are they?", shape),
        "count": ("how many shapes are there?", str(count)),
    }[kind]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), question, answer


def tone(rng: random.Random) -> tuple[bytes, str, str]:
    pitch = rng.choice(list(TONES))
    t = np.arange(int(RATE * 0.08)) / RATE
    freq = TONES[pitch] * rng.uniform(0.9, 1.1)
    samples = 128 + 90 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.28))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(RATE)
        out.writeframes(samples.round().clip(0, 255).astype(np.uint8).tobytes())
    return buffer.getvalue(), "is the tone high or low?", pitch


def passage(rng: random.Random) -> tuple[bytes, str, str]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    text = f"the {shape} on the table is {colour}."
    if rng.random() < 0.5:
        return text.encode(), f"what colour is the {shape}?", colour
    return text.encode(), f"which shape is {colour}?", shape


def sample(rng: random.Random, index: int) -> dict[str, bytes]:
    kind = rng.choice(("scene", "scene", "photo", "tone", "passage"))
    maker = {"scene": scene, "photo": scene, "tone": tone, "passage": passage}[kind]
    data, question, answer = maker(rng)
    ext = {"scene": "png", "photo": "png", "tone": "wav", "passage": "txt"}[kind]
    return {
        "__key__": f"{index:06d}".encode(),
        f"{kind}.{ext}": data,
        "question.txt": question.encode(),
        "answer.txt": answer.encode(),
    }


def write(out: Path, split: str, count: int, seed: int, per_shard: int) -> None:
    """Plain USTAR tars (webdataset reads any tar): without a PAX header per member, reading the
    shards costs about half the header parsing."""
    rng = random.Random(seed)
    for shard in range((count + per_shard - 1) // per_shard):
        with tarfile.open(out / f"{split}-{shard:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
                fields = sample(rng, index)
                key = fields.pop("__key__").decode()
                for name, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    tar.addfile(info, io.BytesIO(data))


def compress(out: Path) -> None:
    """Tar headers dwarf these tiny samples; gzip shrinks the shards about 20x and tarfile reads it as is."""
    for tar in sorted(out.glob("*.tar")):
        data = tar.read_bytes()
        (out / f"{tar.name}.gz").write_bytes(gzip.compress(data, mtime=0))
        tar.unlink()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.tar"), *out.glob("*.tar.gz")]:
        old.unlink()
    write(out, "train", 3000, seed=1, per_shard=1000)
    write(out, "eval", 300, seed=2, per_shard=300)
    compress(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "core/mbp/bundled"))
